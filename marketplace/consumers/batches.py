"""The heartbeats and the hellos of all agent sockets in a server process each go through one
queue, applied in batches (services/presence.py): whatever queued while the previous batch
was written goes into the next one, so a quiet process answers at once and a busy one writes
a few transactions a second instead of one for every message.

Hellos are batched because a fleet comes back at once (after an outage, a deploy): a node
coming online is a dozen statements and a commit, and one transaction per hello welcomed
~20 agents a second per process (bench/agent_scale.py, docs/BENCHMARKS.md)."""

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.db import database_sync_to_async

from .. import metrics
from ..services.presence import heartbeats_record, hellos_record

log = logging.getLogger(__name__)


class Batches:
    """A queue whose items `apply` takes a batch at a time, `concurrency` batches at once on
    `executor`'s threads: threads of their own, never the process's one shared sync thread
    (the handshakes' middleware uses that)."""

    def __init__(self, apply: Callable[[list], list], *, max_batch: int, executor: ThreadPoolExecutor,
                 concurrency: int, name: str,
                 on_batch: Callable[[int, float], None] = lambda size, lag: None):
        self.apply, self.max_batch, self.on_batch, self.name = apply, max_batch, on_batch, name
        self.queue: list[tuple[Any, asyncio.Future, float]] = []  # (item, its answer, arrival)
        self.wake = asyncio.Event()
        self.executor = executor
        self.tasks = [asyncio.create_task(self._drain()) for _ in range(concurrency)]

    def alive(self) -> bool:
        return not any(task.done() for task in self.tasks)

    async def put(self, item) -> Any:
        """Queue an item; returns what `apply` gave for it once its batch is applied."""
        done = asyncio.get_running_loop().create_future()
        self.queue.append((item, done, time.perf_counter()))
        self.wake.set()
        return await done

    async def _drain(self) -> None:
        while True:
            await self.wake.wait()
            while self.queue:
                batch, self.queue = self.queue[:self.max_batch], self.queue[self.max_batch:]
                if not self.queue:
                    self.wake.clear()
                try:
                    results = await database_sync_to_async(self.apply, thread_sensitive=False,
                                                           executor=self.executor)([i for i, _, _ in batch])
                except Exception as exc:  # each item's sender gets the exception (consumers/agent.py)
                    log.exception("applying %d %s failed", len(batch), self.name)
                    results = [exc] * len(batch)
                else:
                    # This lag grows first when a process holds more agents than it can write
                    # for, long before the watchdog's timeout turns any offline.
                    self.on_batch(len(batch), time.perf_counter() - batch[0][2])
                for (_, done, _), out in zip(batch, results, strict=True):
                    if not done.done():
                        done.set_result(out)


def _heartbeat_batch(size: int, lag: float) -> None:
    metrics.HEARTBEAT_BATCH_MESSAGES.observe(size)
    metrics.HEARTBEAT_WRITE_LAG_SECONDS.observe(lag)


def _hello_batch(size: int, lag: float) -> None:
    metrics.HELLO_BATCH_MESSAGES.observe(size)


# The threads are the process's (shared by every event loop it runs: tests run one per
# test); the queues are per event loop (one per server process).
_HEARTBEAT_THREADS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-heartbeats")
_HELLO_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="agent-hellos")
_heartbeats: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Batches]" = weakref.WeakKeyDictionary()
_hellos: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Batches]" = weakref.WeakKeyDictionary()


def heartbeats() -> Batches:
    """This process's heartbeats: one batch at a time, up to 1,000 (an idle node's is a
    share of one UPDATE). A failed batch answers [] to each: the next heartbeat tries again."""
    loop = asyncio.get_running_loop()
    if loop not in _heartbeats or not _heartbeats[loop].alive():
        _heartbeats[loop] = Batches(heartbeats_record, max_batch=1000, executor=_HEARTBEAT_THREADS,
                                    concurrency=1, name="heartbeats", on_batch=_heartbeat_batch)
    return _heartbeats[loop]


def hellos() -> Batches:
    """This process's hellos: two batches at a time, each of at most 25 in one transaction;
    a batch's node rows stay locked until it commits, and a heartbeat of one of them waits
    on that, so batches stay short (25 hellos: a few hundred milliseconds)."""
    loop = asyncio.get_running_loop()
    if loop not in _hellos or not _hellos[loop].alive():
        _hellos[loop] = Batches(hellos_record, max_batch=25, executor=_HELLO_THREADS, concurrency=2,
                                name="hellos", on_batch=_hello_batch)
    return _hellos[loop]
