"""Rank 0 reports to the agent by appending JSON lines to a file the agent tails."""

from __future__ import annotations

import json
import os
import time


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


