"""The agent sockets' ingest engine, one per server process (event loop): every socket's
data messages go through one queue, and one drainer applies whatever queued while the last
batch was written, in one transaction (services/agent_ingest.py, or the progress fast path
services/progress_ingest.py), then acknowledges them on their sockets, sends the live
updates, and publishes throttled progress snapshots. The socket consumer (consumers/agent.py)
authenticates, rate-limits and queues; this module never reads a socket.
"""

import asyncio
import json
import logging
import time
import weakref
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from .. import metrics
from ..services import agent_ingest, agent_protocol, live
from ..services.progress_ingest import ProgressWriter

log = logging.getLogger(__name__)
DRAIN_BATCH = 2000
# At most this many progress snapshots each 0.25 s tick (40 jobs a second per process).
SNAPSHOTS_PER_TICK = 10


class Ingest:
    """The data messages of all agent sockets in this process go through one queue. One
    drainer applies whatever has queued up while the previous batch was being written, across
    sockets, in one transaction (group commit): at a thousand progress messages a second from
    fifty jobs that is a few dozen commits a second instead of a thousand, and no extra delay
    when traffic is light. Each assignment's messages stay in order. The drainer lives while
    sockets are attached, and finishes what they queued before it stops."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.sockets = 0
        self.task = asyncio.create_task(self._drain())
        self.due: set[int] = set()           # jobs with progress not yet in a snapshot
        self.snapshot_at: dict[int, float] = {}
        self.publisher: asyncio.Task | None = None
        self.writer = ProgressWriter() if ProgressWriter.available() else None
        self.first_put: float | None = None  # arrival of the oldest message not yet in a batch

    def attach(self) -> None:
        self.sockets += 1

    def detach(self) -> None:
        self.sockets -= 1
        if self.sockets <= 0:
            self.queue.put_nowait(None)  # stop once everything queued so far is applied

    def put(self, consumer: Any, message: dict) -> None:  # an AgentConsumer (consumers/agent.py)
        if self.first_put is None:
            self.first_put = time.perf_counter()
        self.queue.put_nowait((consumer, message))

    async def _drain(self):
        try:
            while True:
                batch = [await self.queue.get()]
                while not self.queue.empty() and len(batch) < DRAIN_BATCH:
                    batch.append(self.queue.get_nowait())
                stop = None in batch
                batch = [item for item in batch if item is not None]
                arrived, self.first_put = self.first_put, None if self.queue.empty() else time.perf_counter()
                if batch:
                    # Sequential on purpose: while a batch is written and its replies sent, the
                    # next one gathers; overlapping them made batches smaller and slower overall.
                    began = time.perf_counter()
                    written = await self._write(batch)
                    done = time.perf_counter()
                    metrics.INGEST_BATCH_MESSAGES.observe(len(batch))
                    metrics.INGEST_BATCH_SECONDS.observe(done - began)
                    metrics.INGEST_LAG_SECONDS.observe(done - (arrived or began))
                    await self._reply(batch, *written)
                if stop and self.sockets <= 0 and self.queue.empty():
                    _ingests.pop(asyncio.get_running_loop(), None)
                    return
        finally:  # stopped, or cancelled with its loop: the connection goes with it
            if self.writer is not None:
                await quietly(self.writer.close())

    async def _write(self, batch: list) -> tuple[list, list, set]:
        outbox: list = []
        snapshots: set[int] = set()
        if self.writer is not None:
            try:
                results = await self.writer.apply([(c.node, m) for c, m in batch], outbox, snapshots)
            except Exception:  # PostgreSQL away or the connection broken: the ORM path decides
                log.warning("progress fast path failed; applying %d messages through the ORM", len(batch),
                            exc_info=True)
                await quietly(self.writer.close())
                results, outbox, snapshots = None, [], set()
            if results is not None:
                return results, outbox, snapshots
        try:
            # Off the shared sync thread: handshakes and heartbeats must not wait on it.
            results = await database_sync_to_async(agent_ingest.agent_data_batch, thread_sensitive=False)(
                items=[(c.node, m) for c, m in batch], outbox=outbox, snapshots=snapshots)
        except Exception:  # a bug must not stop ingestion: nothing was applied or acked
            log.exception("applying %d agent messages failed", len(batch))
            error = agent_protocol.AgentMessageError("not applied; resend later", code="internal")
            results = [error] * len(batch)
            outbox, snapshots = [], set()
        return results, outbox, snapshots

    async def _reply(self, batch, results, outbox, snapshots) -> None:
        acks: dict[Any, list] = {}
        for (consumer, message), error in zip(batch, results, strict=True):
            if error is None:
                acks.setdefault(consumer, []).append(message.get("id"))
                consumer.refused_in_a_row = 0
                continue
            if error.code != "internal":
                log.info("agent %s: %s", consumer.node.pk, error.message)
            await quietly(consumer._error(error.code, error.message, message.get("id")))
        for consumer, ids in acks.items():  # one frame per socket and batch
            await quietly(consumer.send(json.dumps({"type": "ack", "ack": ids[-1], "ids": ids})))
        try:
            await _send_all(outbox)  # one message per group per batch
        except Exception:  # Redis away: the points are stored; browsers resync from the database
            log.warning("broadcast of %d live updates failed", len(outbox), exc_info=True)
        if snapshots:
            self.due |= snapshots
            if self.publisher is None or self.publisher.done():
                self.publisher = asyncio.create_task(self._publish_snapshots())

    async def _publish_snapshots(self):
        """A busy job's page and dashboards get its status, ETA and cost at most every
        SNAPSHOT_EVERY_S, computed for all due jobs at once, beside the ingest (its points
        go out with every batch)."""
        while self.due:
            now = time.monotonic()
            ready = {j for j in self.due if now - self.snapshot_at.get(j, -1e9) >= live.SNAPSHOT_EVERY_S}
            # A slice per tick: jobs that started together would otherwise fall due together,
            # and one lump of snapshots holds up the ingest's replies (the latency's tail).
            ready = set(sorted(ready, key=lambda j: self.snapshot_at.get(j, -1e9))[:SNAPSHOTS_PER_TICK])
            if ready:
                self.due -= ready
                if len(self.snapshot_at) > 10_000:  # jobs long finished: forget them
                    self.snapshot_at = {j: t for j, t in self.snapshot_at.items()
                                        if now - t < live.SNAPSHOT_EVERY_S}
                self.snapshot_at.update(dict.fromkeys(ready, now))
                try:
                    await _send_all(await database_sync_to_async(
                        live.snapshots, thread_sensitive=False)(ready, events=1))
                except Exception:  # a snapshot is only a courtesy: the points went out
                    log.exception("progress snapshots of %d jobs failed", len(ready))
            await asyncio.sleep(0.25)


async def quietly(send) -> None:
    try:
        await send
    except Exception:  # that socket has gone; the agent resends what was not acknowledged
        log.debug("reply to a closed agent socket dropped", exc_info=True)


async def _send_all(events: list[tuple[str, dict]]) -> None:
    layer = get_channel_layer()
    if layer is None or not events:
        return
    if hasattr(layer, "group_send_many"):  # Redis: one round trip (webapp/channel_layer.py)
        await layer.group_send_many(events)
    else:
        await asyncio.gather(*(layer.group_send(group, event) for group, event in events))


_ingests: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Ingest]" = weakref.WeakKeyDictionary()


def ingest() -> Ingest:
    loop = asyncio.get_running_loop()
    if loop not in _ingests:
        _ingests[loop] = Ingest()
    return _ingests[loop]
