"""Messages the platform has not acknowledged yet, kept on disk so that a restart or a
dropped connection loses none; and the next sequence number of each assignment."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path


class Outbox:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS pending (id TEXT PRIMARY KEY, body TEXT NOT NULL,"
                         " created REAL NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS seqs (assignment INTEGER PRIMARY KEY,"
                         " next INTEGER NOT NULL)")

    def put_numbered(self, assignment: int, message: dict) -> dict:
        """Keep `message` with its assignment's next sequence number, in one transaction: a
        kill between numbering and storing would leave a number that no message carries, and
        the platform applies an assignment's messages strictly in order."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO seqs VALUES (?, 1) ON CONFLICT(assignment) DO UPDATE "
                                 "SET next = next + 1", (assignment,))
                (seq,) = self._db.execute("SELECT next FROM seqs WHERE assignment = ?",
                                          (assignment,)).fetchone()
                numbered = {**message, "assignment": assignment, "seq": seq}
                self._db.execute("INSERT OR REPLACE INTO pending VALUES (?, ?, ?)",
                                 (numbered["id"], json.dumps(numbered), time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return numbered

    def ack(self, message_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE id = ?", (message_id,))

    def pending(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM pending ORDER BY created, rowid").fetchall()
        return [json.loads(body) for (body,) in rows]

    def assignments(self) -> list[int]:
        """The assignments that unacknowledged messages are about: the platform must not
        write their work off while they are on their way."""
        return sorted({m["assignment"] for m in self.pending()})

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]

    def close(self) -> None:
        self._db.close()
