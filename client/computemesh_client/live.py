"""A job's live progress over its WebSocket, `/ws/jobs/<id>/` (marketplace/consumers/jobs.py).

The server persists first and broadcasts second, and broadcasts may be lost; what was
missed is asked for with `{"type": "resync", "after_seq": N, "after_log_seq": M}` and
answered from the database (`history`). So the watcher resyncs after every (re)connect and
after a quiet spell, holds live messages back until the history has answered, and drops
repeats by sequence number: every metric point and log line comes out once, in order.

`watch_job` is the async iterator; `watch_job_blocking` the same as a blocking generator.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.exceptions import InvalidHandshake, InvalidStatus

from . import errors
from .client import TERMINAL


@dataclass
class LiveEvent:
    """`type`: "metric" (a progress point: seq, step, total_steps, loss, samples_per_sec,
    at), "log" (seq, line, at), "job" (a snapshot: status, progress with eta_seconds,
    cost_so_far, spend, events) or "reconnected" (after a dropped connection)."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)


def socket_url(base_url: str, job_id: int) -> tuple[str, str]:
    """(ws URL, Origin) for a job; the server checks the Origin against its allowed hosts."""
    parts = urlsplit(base_url.rstrip("/"))
    scheme = "wss" if parts.scheme == "https" else "ws"
    prefix = parts.path.rstrip("/")
    return f"{scheme}://{parts.netloc}{prefix}/ws/jobs/{int(job_id)}/", f"{parts.scheme}://{parts.netloc}"


class _Cursor:
    def __init__(self, after_seq: int, after_log_seq: int):
        self.seq, self.log_seq = after_seq, after_log_seq

    def resync(self) -> str:
        return json.dumps({"type": "resync", "after_seq": self.seq, "after_log_seq": self.log_seq})

    def events(self, message: dict[str, Any]) -> list[LiveEvent]:
        kind = message.get("type")
        out: list[LiveEvent] = []
        points = message.get("metrics") if kind == "history" else message.get("points")
        lines = message.get("logs") if kind == "history" else message.get("lines")
        for p in sorted(points or [], key=lambda p: p.get("seq", 0)):
            if p.get("seq", 0) > self.seq:
                self.seq = p["seq"]
                out.append(LiveEvent("metric", p))
        for line in sorted(lines or [], key=lambda x: x.get("seq", 0)):
            if line.get("seq", 0) > self.log_seq:
                self.log_seq = line["seq"]
                out.append(LiveEvent("log", line))
        if kind in ("history", "job") and isinstance(message.get("job"), dict):
            out.append(LiveEvent("job", message["job"]))
        return out


async def watch_job(url: str, token: str | None, job_id: int, *, after_seq: int = 0,
                    after_log_seq: int = 0, until: frozenset[str] | set[str] | None = TERMINAL,
                    history_only: bool = False, quiet_resync_s: float = 15.0,
                    give_up_after_s: float = 120.0) -> AsyncIterator[LiveEvent]:
    """Yield the job's live events from the given sequence numbers on, until its status is
    in `until` (None: forever), reconnecting with a resync after drops. `history_only`
    stops after what the database holds now (a log tail). Raises NotFound when the server
    refuses the socket (not your job), NetworkError after `give_up_after_s` unreachable."""
    ws_url, origin = socket_url(url, job_id)
    headers = {"Authorization": f"Token {token}"} if token else {}
    cursor = _Cursor(after_seq, after_log_seq)
    down_since: float | None = None
    delay = 0.25
    connected_before = False
    while True:
        try:
            async with websockets.connect(ws_url, additional_headers=headers, origin=origin,  # type: ignore[arg-type]
                                          open_timeout=10, ping_interval=20, close_timeout=2,
                                          max_size=16 * 1024 * 1024) as ws:
                down_since, delay = None, 0.25
                await ws.send(cursor.resync())
                if connected_before:
                    yield LiveEvent("reconnected", {"after_seq": cursor.seq,
                                                    "after_log_seq": cursor.log_seq})
                connected_before = True
                held: list[dict[str, Any]] = []  # live messages that came before the history
                synced = False
                while True:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), timeout=quiet_resync_s)
                    except TimeoutError:
                        await ws.send(cursor.resync())  # a lost broadcast is only late
                        continue
                    try:
                        message = json.loads(raw)
                    except ValueError:
                        continue  # not ours to read; the next resync fills any gap
                    if not isinstance(message, dict) or message.get("type") == "error":
                        continue
                    if not synced:
                        if message.get("type") != "history":
                            held.append(message)
                            continue
                        synced = True
                        batch = [message, *held]
                        held = []
                    else:
                        batch = [message]
                    for item in batch:
                        for event in cursor.events(item):
                            yield event
                            ended = until is not None and event.data.get("status") in until
                            if event.type == "job" and ended:
                                return
                    if history_only:
                        return
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403, 404):
                raise errors.NotFound(404, {"detail": f"Job {job_id} is not there or not yours "
                                                      "(the live socket was refused).",
                                            "code": "not_found"}) from None
            if down_since is None:
                down_since = time.monotonic()
        except (OSError, TimeoutError, InvalidHandshake, websockets.ConnectionClosed):
            if down_since is None:
                down_since = time.monotonic()
        else:  # the server closed the socket cleanly (a restart): connect again
            down_since = down_since or time.monotonic()
        if time.monotonic() - down_since > give_up_after_s:
            raise errors.NetworkError(f"lost the live connection to {url} for job {job_id} and "
                                      f"could not reconnect for {give_up_after_s:.0f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def watch_job_blocking(url: str, token: str | None, job_id: int, **kwargs: Any) -> Iterator[LiveEvent]:
    """`watch_job` as a blocking generator (scripts, notebooks): an event loop in a thread
    of its own feeds a queue; closing the generator stops the loop."""
    out: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=10_000)
    state: dict[str, Any] = {}
    started = threading.Event()

    async def pump() -> None:
        state["loop"], state["task"] = asyncio.get_running_loop(), asyncio.current_task()
        started.set()
        try:
            async for event in watch_job(url, token, job_id, **kwargs):
                await asyncio.to_thread(out.put, ("event", event))
        except asyncio.CancelledError:
            return
        except BaseException as exc:  # handed to the caller's thread
            out.put(("error", exc))
            return
        out.put(("end", None))

    thread = threading.Thread(target=asyncio.run, args=(pump(),), daemon=True,
                              name=f"computemesh-watch-{job_id}")
    thread.start()
    started.wait()
    try:
        while True:
            kind, item = out.get()
            if kind == "event":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        loop, task = state.get("loop"), state.get("task")
        if loop is not None and task is not None and not task.done():
            loop.call_soon_threadsafe(task.cancel)
            while True:  # unblock a pump waiting on a full queue
                try:
                    out.get_nowait()
                except queue.Empty:
                    break
        thread.join(timeout=5)


async def job_history(url: str, token: str | None, job_id: int) -> list[LiveEvent]:
    """What the database holds now: metric points, the newest log lines and a snapshot."""
    return [event async for event in watch_job(url, token, job_id, until=None, history_only=True)]
