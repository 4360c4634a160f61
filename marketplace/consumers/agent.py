"""The agent socket, /ws/agent/: one per provider node, authenticated by its token."""

import asyncio
import json
import logging
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from .. import metrics
from ..errors import NotFound
from ..services import agent_ingest, agent_protocol, execution, live
from ..services.nodes import node_by_token
from ..services.presence import Beat
from ..services.progress_ingest import ProgressWriter
from .base import LiveConsumer
from .heartbeats import heartbeats

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 1_048_576
# Per node (the id its token authenticated, never a value from the message, which the sender
# chooses): a burst of 300 data messages, then 150 a second (above the 100 a second a busy
# job may send). Beyond it a message is refused unacknowledged, so the agent resends it
# later, in order; nothing is lost.
RATE_BURST, RATE_PER_S = 300.0, 150.0
# hello and heartbeat each write the node's row: an honest agent sends one every 5 s (the
# test stacks every 1 s), so twice a second with room for a reconnect's burst is plenty.
CONTROL_BURST, CONTROL_PER_S = 20.0, 2.0
# An agent whose messages keep being refused (malformed, invalid) is told why and closed
# after this many in a row; its node may connect again after a wait that doubles with each
# such close (up to the longest), so a broken or hostile agent cannot keep the ingest busy.
REFUSED_IN_A_ROW = 50
REFUSALS = frozenset({"malformed", "invalid", "unknown_type", "not_yours"})  # not: rate_limited, out of order
REFUSED_WAIT_S = (5.0, 300.0)
DRAIN_BATCH = 2000
# At most this many progress snapshots each 0.25 s tick (40 jobs a second per process).
SNAPSHOTS_PER_TICK = 10


def _token(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() in ("token", "bearer") and token:
                return token.strip()
    return None


@database_sync_to_async
def _authenticate(token):
    try:
        return node_by_token(token)
    except NotFound:
        return None


# Hellos run on threads of their own, not the process's one shared sync thread: a fleet
# connecting at once queued its handshakes (one query each) behind each other's hellos (a
# dozen queries, a node coming online) past daphne's 5 s handshake limit, and they failed
# (bench/agent_scale.py). Two threads: the database, not Python, is what a hello waits on.
_HELLOS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="agent-hello")


class NodeLimiter:
    """Token buckets per authenticated node, shared by all of its sockets on this event loop
    (one per server process):
    a second connection with the same token does not get a second allowance. (Each server
    process keeps its own; an agent spreading sockets over N processes gets N times the
    rate, which is what one honest agent per process costs anyway.)"""

    def __init__(self):
        self.buckets: dict[tuple[int, str], tuple[float, float]] = {}
        self.shut_out: dict[int, tuple[float, float]] = {}  # node id -> (until, next wait)

    def shut(self, node_id: int) -> float:
        """Close this node out for a while (longer each time); returns the wait."""
        now = time.monotonic()
        _, wait = self.shut_out.get(node_id, (now, REFUSED_WAIT_S[0]))
        self.shut_out[node_id] = (now + wait, min(wait * 2, REFUSED_WAIT_S[1]))
        return wait

    def shut_for(self, node_id: int) -> float:
        until, _ = self.shut_out.get(node_id, (0.0, 0.0))
        return max(0.0, until - time.monotonic())

    def allow(self, node_id: int, kind: str, burst: float, per_s: float) -> bool:
        now = time.monotonic()
        if len(self.buckets) > 50_000:  # nodes long gone: a full bucket is the same as none
            self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < burst / per_s}
        tokens, last = self.buckets.get((node_id, kind), (burst, now))
        tokens = min(burst, tokens + (now - last) * per_s)
        allowed = tokens >= 1
        self.buckets[(node_id, kind)] = (tokens - 1 if allowed else tokens, now)
        return allowed


class AgentConsumer(LiveConsumer):
    node = None

    def _allowed(self, kind: str) -> bool:
        if kind in ("hello", "heartbeat"):
            return _limiter().allow(self.node.pk, "control", CONTROL_BURST, CONTROL_PER_S)
        return _limiter().allow(self.node.pk, "data", RATE_BURST, RATE_PER_S)

    async def connect(self):
        token = _token(self.scope)
        self.node = await _authenticate(token) if token else None
        if self.node is None or _limiter().shut_for(self.node.pk) > 0:
            # Refused at the handshake (HTTP 403): no token, or a node closed out for a while
            # after a run of refused messages (it was told why before the close).
            await self.close(code=4401 if self.node is None else 4429)
            return
        self.refused_in_a_row = 0
        # Where this node may host a rendezvous: the address its socket comes from, and the
        # one its agent advertises in `hello` (agent_protocol._clean_body checks rank 0's choice).
        client = self.scope.get("client") or (None,)
        self.rdzv_hosts = {str(client[0])} if client[0] else set()
        self.group = agent_protocol.node_group(self.node.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.ingest = _ingest()
        self.ingest.attach()
        await self.accept()

    async def disconnect(self, code):
        # Presence is judged by heartbeats (the watchdog), not by one dropped socket.
        # Queued messages are still applied; unacknowledged ones are resent after a reconnect.
        if getattr(self, "ingest", None) is not None:
            self.ingest.detach()
            self.ingest = None
        if self.node is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def _error(self, code: str, message: str, ref=None):
        await self.send(json.dumps({"type": "error", "code": code, "message": message, "ref": ref}))
        if code in REFUSALS:
            await self._refused()

    async def _refused(self):
        self.refused_in_a_row = getattr(self, "refused_in_a_row", 0) + 1
        if self.refused_in_a_row == REFUSED_IN_A_ROW:
            wait = _limiter().shut(self.node.pk)
            log.warning("agent %s: %d refused messages in a row; closed for %.0f s",
                        self.node.pk, REFUSED_IN_A_ROW, wait)
            await self.send(json.dumps({
                "type": "error", "code": "too_many_refused", "ref": None,
                "message": f"{REFUSED_IN_A_ROW} messages in a row were refused (see the errors "
                           f"before this one); connect again in {wait:.0f} s"}))
            await self.close(code=4429)

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None or len(text_data) > MAX_MESSAGE_BYTES:
            await self._error("malformed", "send JSON text frames of at most 1 MiB")
            return
        try:
            message = json.loads(text_data)
        except ValueError:
            await self._error("malformed", "not valid JSON")
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self._error("malformed", "a message is a JSON object with a 'type'")
            return
        kind, ref = message["type"], message.get("id")
        if not self._allowed(kind):
            await self._error("rate_limited", "too many messages from this node; resend later", ref)
            return
        if kind == "hello":
            if isinstance(message.get("advertise_addr"), str) and message["advertise_addr"]:
                self.rdzv_hosts.add(message["advertise_addr"][:255])
            try:
                out = await database_sync_to_async(execution.agent_hello, thread_sensitive=False,
                                                   executor=_HELLOS)(node=self.node, hello=message)
            except agent_protocol.AgentRefused as exc:
                await self._error(exc.code, exc.message, ref)
                await self.close(code=4403)
                return
        elif kind == "heartbeat":
            running = message.get("running") if isinstance(message.get("running"), list) else []
            unacked = message.get("unacked") if isinstance(message.get("unacked"), list) else None
            # Batched with the other sockets' heartbeats in this process (consumers/heartbeats.py).
            out = await heartbeats().beat(Beat(node=self.node, running=running, unacked=unacked,
                                               steps=message.get("steps")))
            if message.get("ack") is True:  # asked for: the round trip (bench/agent_scale.py)
                out = [*out, {"type": "heartbeat.ack", "ref": ref}]
        else:
            # Set here, never taken from the agent: what rank 0's rendezvous host is checked against.
            message["seen_hosts"] = sorted(self.rdzv_hosts)
            self.ingest.put(self, message)
            return
        for item in out:
            await self.send(json.dumps(item))

    async def agent_forward(self, event):
        """A message for this node's agent from a task or service (after its commit)."""
        await self.send(json.dumps(event["message"]))

    async def agent_close(self, event):
        """The platform took this node off (its organization was suspended): say why and
        close; its token is refused at the next handshake (services/suspension.py)."""
        await _quietly(self._error("suspended", str(event.get("reason", ""))[:500]))
        await self.close(code=int(event.get("code", 4403)))


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

    def put(self, consumer: "AgentConsumer", message: dict) -> None:
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
                await _quietly(self.writer.close())

    async def _write(self, batch: list) -> tuple[list, list, set]:
        outbox: list = []
        snapshots: set[int] = set()
        if self.writer is not None:
            try:
                results = await self.writer.apply([(c.node, m) for c, m in batch], outbox, snapshots)
            except Exception:  # PostgreSQL away or the connection broken: the ORM path decides
                log.warning("progress fast path failed; applying %d messages through the ORM", len(batch),
                            exc_info=True)
                await _quietly(self.writer.close())
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
        acks: dict[AgentConsumer, list] = {}
        for (consumer, message), error in zip(batch, results, strict=True):
            if error is None:
                acks.setdefault(consumer, []).append(message.get("id"))
                consumer.refused_in_a_row = 0
                continue
            if error.code != "internal":
                log.info("agent %s: %s", consumer.node.pk, error.message)
            await _quietly(consumer._error(error.code, error.message, message.get("id")))
        for consumer, ids in acks.items():  # one frame per socket and batch
            await _quietly(consumer.send(json.dumps({"type": "ack", "ack": ids[-1], "ids": ids})))
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


async def _quietly(send) -> None:
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


def _ingest() -> Ingest:
    loop = asyncio.get_running_loop()
    if loop not in _ingests:
        _ingests[loop] = Ingest()
    return _ingests[loop]


_limiters: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, NodeLimiter]" = weakref.WeakKeyDictionary()


def _limiter() -> NodeLimiter:
    loop = asyncio.get_running_loop()
    if loop not in _limiters:
        _limiters[loop] = NodeLimiter()
    return _limiters[loop]
