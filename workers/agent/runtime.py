"""Which provider runtime this agent offers to consumers' own code: the newest entry of
workers/runtimes.json whose packages this environment has, in the versions it names. Read
from installed package metadata (nothing is imported), once per process."""

from __future__ import annotations

import functools
import json
import sys
from importlib import metadata
from pathlib import Path

RUNTIMES_PATH = Path(__file__).resolve().parent.parent / "runtimes.json"


def _numbers(version: str) -> tuple[int, ...]:
    # "2.13.0+cpu" -> (2, 13, 0): the local label (+cpu, +cu128) and pre-release tails are
    # not part of what a runtime promises.
    out = []
    for part in version.split("+", 1)[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
        if not part.isdigit():
            break
    return tuple(out)


def version_satisfies(installed: str, wanted: str) -> bool:
    """`wanted` is "==X" (the same numeric version) or ">=X" (at least)."""
    if wanted.startswith("=="):
        want = _numbers(wanted[2:])
        return _numbers(installed)[:len(want)] == want
    if wanted.startswith(">="):
        have, want = _numbers(installed), _numbers(wanted[2:])
        width = max(len(have), len(want))
        return have + (0,) * (width - len(have)) >= want + (0,) * (width - len(want))
    return False


def runtime_satisfied(runtime: dict, version_of=metadata.version) -> bool:
    if runtime.get("python") and runtime["python"] != f"{sys.version_info[0]}.{sys.version_info[1]}":
        return False
    for package, wanted in runtime.get("packages", {}).items():
        try:
            installed = version_of(package)
        except metadata.PackageNotFoundError:
            return False
        if not version_satisfies(installed, wanted):
            return False
    return True


@functools.cache
def runtime_name() -> str:
    """The runtime this agent reports in its hello; "" when its environment offers none."""
    try:
        runtimes = json.loads(RUNTIMES_PATH.read_text())["runtimes"]
    except (OSError, ValueError, KeyError):
        return ""
    for runtime in reversed(runtimes):  # newest last in the file
        if runtime_satisfied(runtime):
            return runtime["name"]
    return ""
