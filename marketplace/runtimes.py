"""The provider runtimes a code bundle may ask for: data (workers/runtimes.json) that the
agent reads too, to name the runtime it offers in its hello."""

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .errors import MarketError

RUNTIMES_PATH = Path(__file__).resolve().parent.parent / "workers" / "runtimes.json"
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Runtime:
    name: str
    description: str
    python: str
    packages: dict[str, str]


@cache
def runtimes() -> dict[str, Runtime]:
    data = json.loads(RUNTIMES_PATH.read_text())
    return {r["name"]: Runtime(name=r["name"], description=r.get("description", ""),
                               python=r.get("python", ""), packages=dict(r["packages"]))
            for r in data["runtimes"]}


def latest_runtime() -> str:
    return list(runtimes())[-1]


def validate_runtime(name: str, *, field: str = "runtime") -> str:
    """A well-formed runtime name. One this platform does not list is kept (a bundle may be
    written for a newer runtime than the providers offer today): the quote then says that
    no provider offers it, instead of the upload failing."""
    name = (name or "").strip()
    if not NAME.fullmatch(name):
        known = ", ".join(runtimes())
        raise MarketError(f"Name the provider runtime the bundle needs (lower-case letters, "
                          f"digits, '.', '-', '_'; at most 64), e.g. {known}.", field=field,
                          code="invalid_runtime")
    return name


def agent_runtime(value) -> str:
    """The runtime an agent's hello names ("" when none or malformed)."""
    return value if isinstance(value, str) and NAME.fullmatch(value) else ""
