"""What every command module shares: the root `cli` group (its help is the exit-code
contract), the per-invocation State, --json and the table/money/progress helpers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TransferSpeedColumn
from rich.table import Table

from .. import __version__, config
from ..client import Client
from ..errors import AuthenticationError

HELP = """`computemesh`: the marketplace from a terminal.

Exit codes: 0 done; 1 a watched job failed (or was cancelled or refunded); 2 usage error
or invalid input (the field is named); 3 not found, not yours, or refused (wrong password,
not allowed, not possible now); 4 the server could not be reached (or failed).
Every command takes --json (machine-readable output on stdout). Errors are one line on
stderr; with --json their API error shape is also printed on stdout.
Shell completion: `eval "$(computemesh completion bash)"` (bash, zsh or fish).
"""

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
out = Console(highlight=False, soft_wrap=True)


class State:
    def __init__(self, url: str | None):
        self.url_option = url
        self.json = False
        self._client: Client | None = None

    @property
    def settings(self) -> config.Settings:
        return config.load(self.url_option)

    def client(self, *, auth: bool = True) -> Client:
        if self._client is None:
            s = self.settings
            if auth and not s.token:
                raise AuthenticationError(401, {
                    "detail": f"Not logged in to {s.url}: run `computemesh login` or set "
                              "COMPUTEMESH_TOKEN.", "code": "not_logged_in"})
            retries = os.environ.get("COMPUTEMESH_RETRIES", "")
            self._client = Client(s.url, s.token, retries=int(retries) if retries.isdigit() else 3)
        return self._client


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(State).json = True


def json_option(f: Callable) -> Callable:
    return click.option("--json", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_json, help="Machine-readable JSON on stdout.")(f)


pass_state = click.make_pass_decorator(State, ensure=True)


def emit(state: State, data: Any, render: Callable[[], None]) -> None:
    if state.json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render()


def money(value: Any) -> str:
    if value in (None, ""):
        return "-"
    try:
        return f"{float(value):.6f}".rstrip("0").rstrip(".") if float(value) else "0"
    except (TypeError, ValueError):
        return str(value)


def eta(seconds: Any) -> str:
    if seconds is None:
        return "-"
    seconds = int(float(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def table(columns: Iterable[str], rows: Iterable[Iterable[Any]], title: str | None = None) -> Table:
    grid = Table(title=title, header_style="bold", title_justify="left")
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*("-" if v is None else str(v) for v in row))
    return grid


def upload_progress(state: State, label: str):
    """A progress bar on stderr (none with --json): the callback for resumable uploads."""
    if state.json:
        return None, None
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                   TransferSpeedColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=None)

    def update(sent: int, total: int) -> None:
        bar.update(task, completed=sent, total=total)

    return bar, update


# --- the group -----------------------------------------------------------------------

@click.group(context_settings=CONTEXT, help=HELP)
@click.option("--url", metavar="URL", help="The platform (default: saved login, COMPUTEMESH_URL, "
              f"or {config.DEFAULT_URL}).")
@json_option
@click.version_option(__version__, prog_name="computemesh")
@click.pass_context
def cli(ctx: click.Context, url: str | None) -> None:
    ctx.ensure_object(State).url_option = url
