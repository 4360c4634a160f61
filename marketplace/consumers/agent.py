"""The agent socket, /ws/agent/: one per provider node, authenticated by its token."""

import asyncio
import json
import logging
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

from channels.db import database_sync_to_async

from ..errors import NotFound
from ..services import agent_protocol
from ..services.nodes import node_by_token
from ..services.presence import Beat, Hello
from .base import LiveConsumer
from .batches import heartbeats, hellos
from .ingest import ingest, quietly

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
# A hello the platform failed to apply closes the socket with this code, and the agent
# connects again and says hello again. (1011, "internal error", is the standard's code, but
# a server may close only with 1000 or 3000-4999: daphne raises on any other.)
HELLO_FAILED = 4500


def _token(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() in ("token", "bearer") and token:
                return token.strip()
    return None


# The handshake's token lookup has threads of its own as well: on the shared sync thread it
# queued behind every other socket's work there (the middleware's session and user, the
# dashboards' and job pages' queries). It stays before accept(): a refused token is an HTTP
# 403 at the handshake, which the agent takes as final (workers/agent, TokenRefused).
_HANDSHAKES = ThreadPoolExecutor(max_workers=2, thread_name_prefix="agent-auth")


def _node_for(token):
    try:
        return node_by_token(token)
    except NotFound:
        return None


async def _authenticate(token):
    return await database_sync_to_async(_node_for, thread_sensitive=False, executor=_HANDSHAKES)(token)


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
        self.ingest = ingest()
        self.ingest.attach()
        await self.accept()
        # Subscribed after the accept, so that the handshake waits on no Redis round trip
        # (daphne drops one not accepted within 5 s); still before the agent's first message
        # is handled: Channels dispatches a socket's messages one at a time, after connect().
        await self.channel_layer.group_add(self.group, self.channel_name)

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
            # In one transaction with the other sockets' hellos in this process (consumers/batches.py).
            out = await hellos().put(Hello(node=self.node, message=message))
            if isinstance(out, agent_protocol.AgentRefused):
                await self._error(out.code, out.message, ref)
                await self.close(code=4403)
                return
            if isinstance(out, Exception):  # not applied: closed, so that the agent says hello again
                await self.close(code=HELLO_FAILED)
                return
        elif kind == "heartbeat":
            running = message.get("running") if isinstance(message.get("running"), list) else []
            unacked = message.get("unacked") if isinstance(message.get("unacked"), list) else None
            # Batched with the other sockets' heartbeats in this process (consumers/batches.py).
            out = await heartbeats().put(Beat(node=self.node, running=running, unacked=unacked,
                                              steps=message.get("steps")))
            if isinstance(out, Exception):  # not applied: the agent's next heartbeat tries again
                out = []
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
        await quietly(self._error("suspended", str(event.get("reason", ""))[:500]))
        await self.close(code=int(event.get("code", 4403)))


_limiters: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, NodeLimiter]" = weakref.WeakKeyDictionary()


def _limiter() -> NodeLimiter:
    loop = asyncio.get_running_loop()
    if loop not in _limiters:
        _limiters[loop] = NodeLimiter()
    return _limiters[loop]
