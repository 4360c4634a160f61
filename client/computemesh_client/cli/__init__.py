"""`computemesh`: the marketplace from a terminal, one module per command group.

common.py holds the root `cli` group (its help states the exit codes), State and the output
helpers; importing each command module registers its commands on that group; `main` maps
errors to one stderr line and the documented exit codes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import click

from ..errors import EXIT_NETWORK, EXIT_USAGE, ComputeMeshError
from . import account, data, jobs, market, provider, submit  # noqa: F401  (registers the commands)
from .common import State, cli
from .submit import build_spec

__all__ = ["State", "build_spec", "cli", "main"]

def _fail(message: str, code: int, body: Mapping[str, Any] | None = None, *,
          as_json: bool = False) -> int:
    click.echo("error: " + " ".join(message.split()), err=True)
    if as_json:
        click.echo(json.dumps({"error": body or {"detail": message}}))
    return code


def main(argv: list[str] | None = None) -> None:
    state = State(None)
    try:
        code = cli.main(args=argv, prog_name="computemesh", standalone_mode=False, obj=state)
        code = code if isinstance(code, int) else 0
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # click 8.2+: a bare group prints its help
            click.echo(exc.format_message())
            sys.exit(EXIT_USAGE)
        code = _fail(exc.format_message(), EXIT_USAGE, as_json=state.json)
    except click.ClickException as exc:
        code = _fail(exc.format_message(), EXIT_USAGE, as_json=state.json)
    except (click.exceptions.Abort, KeyboardInterrupt):
        code = _fail("interrupted", 130)
    except ComputeMeshError as exc:
        body = exc.as_dict() if hasattr(exc, "as_dict") else {"detail": exc.message}
        message = exc.message
        method, path = getattr(exc, "method", ""), getattr(exc, "path", "")
        if method and path:
            message += f" ({exc.status_code} on {method} {path})"  # type: ignore[attr-defined]
        code = _fail(message, exc.exit_code, body, as_json=state.json)
    except OSError as exc:
        code = _fail(f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}",
                     EXIT_USAGE if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError)
                     else EXIT_NETWORK, as_json=state.json)
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
