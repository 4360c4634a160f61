"""The heartbeats of all agent sockets in a server process go through one queue, applied in
batches (services/presence.py): whatever queued while the previous batch was written goes
into the next one, so a quiet process answers at once and a busy one writes a few batches a
second instead of a transaction per heartbeat on the process's one shared sync thread."""

import asyncio
import logging
import time
import weakref

from channels.db import database_sync_to_async

from .. import metrics
from ..services.presence import Beat, heartbeats_record

log = logging.getLogger(__name__)
MAX_BATCH = 1000


class Heartbeats:
    def __init__(self):
        self.queue: list[tuple[Beat, asyncio.Future, float]] = []  # (beat, its answer, arrival)
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self._drain())

    async def beat(self, beat: Beat) -> list[dict]:
        """Queue a heartbeat; returns the messages for its agent once its batch is applied."""
        done = asyncio.get_running_loop().create_future()
        self.queue.append((beat, done, time.perf_counter()))
        self.wake.set()
        return await done

    async def _drain(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
                try:
                    # Off the shared sync thread, one batch at a time: handshakes and hellos use that one.
                    results = await database_sync_to_async(heartbeats_record, thread_sensitive=False)(
                        [beat for beat, _, _ in batch])
                except Exception:  # the next heartbeat of each tries again
                    log.exception("applying %d heartbeats failed", len(batch))
                    results = [[] for _ in batch]
                else:
                    # This lag grows first when a process holds more agents than it can write
                    # heartbeats for, long before the watchdog's timeout turns any offline.
                    metrics.HEARTBEAT_BATCH_MESSAGES.observe(len(batch))
                    metrics.HEARTBEAT_WRITE_LAG_SECONDS.observe(time.perf_counter() - batch[0][2])
                for (_, done, _), out in zip(batch, results, strict=True):
                    if not done.done():
                        done.set_result(out)


_queues: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Heartbeats]" = weakref.WeakKeyDictionary()


def heartbeats() -> Heartbeats:
    """This event loop's (one per server process) heartbeat queue."""
    loop = asyncio.get_running_loop()
    if loop not in _queues or _queues[loop].task.done():
        _queues[loop] = Heartbeats()
    return _queues[loop]
