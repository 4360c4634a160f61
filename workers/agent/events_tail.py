from __future__ import annotations

import json
from pathlib import Path

from .sandbox import OutsideJob, open_job_file

MAX_READ = 4 << 20  # per poll: a job cannot make the agent read without bound


class EventTail:
    """Reads the complete JSON lines the training's rank 0 appended since the last poll.

    The file is the job's (its code may run in that process): it is opened inside the job
    folder only, never through a link, read a bounded chunk at a time, and a line that is not
    a JSON object is skipped rather than trusted or fatal."""

    def __init__(self, path: Path, *, job_dir: Path | None = None):
        self.path = path
        self.job_dir = job_dir if job_dir is not None else path.parent
        self.offset = 0

    def poll(self) -> list[dict]:
        try:
            with open_job_file(self.job_dir, self.path) as fh:
                fh.seek(self.offset)
                chunk = fh.read(MAX_READ)
        except (FileNotFoundError, OutsideJob):
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) >= MAX_READ:  # one line longer than any event: skip it
                self.offset += len(chunk)
            return []
        self.offset += end + 1
        events = []
        for line in chunk[:end].splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("type"), str):
                events.append(event)
        return events
