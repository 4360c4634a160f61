"""Rank 0 reports to the agent by appending JSON lines to a file the agent tails."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class EventWriter:
    def __init__(self, path: str | os.PathLike | None):
        self._fh = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def emit(self, type_: str, **fields) -> None:
        if self._fh is None:
            return
        fields.update(type=type_, at=time.time())
        self._fh.write(json.dumps(fields, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def read_new(path: Path, offset: int) -> tuple[list[dict], int]:
    """Complete lines appended since `offset`, and the new offset."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    events = [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
    return events, offset + end + 1
