from __future__ import annotations

import json
from pathlib import Path


class EventTail:
    """Reads the complete JSON lines the training's rank 0 appended since the last poll."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def poll(self) -> list[dict]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
