"""The agent socket, /ws/agent/: one per provider node, authenticated by its token."""

import asyncio
import json
import logging
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from ..errors import NotFound
from ..services import execution
from ..services.nodes import node_by_token

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 1_048_576
# Per assignment: a burst of 300 data messages, then 150 a second (above the 100 a second a
# busy job may send). Beyond it a message is refused unacknowledged, so the agent resends
# it later, in order; nothing is lost.
RATE_BURST, RATE_PER_S = 300.0, 150.0
DRAIN_BATCH = 200


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


class AgentConsumer(AsyncWebsocketConsumer):
    node = None

    def _allowed(self, assignment) -> bool:
        now = time.monotonic()
        buckets = self.__dict__.setdefault("buckets", {})
        tokens, last = buckets.get(assignment, (RATE_BURST, now))
        tokens = min(RATE_BURST, tokens + (now - last) * RATE_PER_S)
        if tokens < 1:
            buckets[assignment] = (tokens, now)
            return False
        buckets[assignment] = (tokens - 1, now)
        return True

    async def connect(self):
        token = _token(self.scope)
        self.node = await _authenticate(token) if token else None
        if self.node is None:
            await self.close(code=4401)  # refused at the handshake (HTTP 403)
            return
        self.group = execution.node_group(self.node.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        # Presence is judged by heartbeats (the watchdog), not by one dropped socket.
        # Unacknowledged queued messages are simply resent by the agent after it reconnects.
        if getattr(self, "_drainer", None) is not None:
            self._drainer.cancel()
        if self.node is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def _error(self, code: str, message: str, ref=None):
        await self.send(json.dumps({"type": "error", "code": code, "message": message, "ref": ref}))

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
        if kind == "hello":
            out = await database_sync_to_async(execution.agent_hello)(node=self.node, hello=message)
        elif kind == "heartbeat":
            running = message.get("running") if isinstance(message.get("running"), list) else []
            out = await database_sync_to_async(execution.agent_heartbeat)(node=self.node, running=running)
        else:
            if not self._allowed(message.get("assignment")):
                await self._error("rate_limited", "too many messages for this assignment; resend later",
                                  ref)
                return
            await self._queue().put(message)
            return
        for item in out:
            await self.send(json.dumps(item))

    def _queue(self) -> asyncio.Queue:
        """Data messages are applied by one drainer, as many as have queued up at a time,
        in one transaction: a busy job's progress never waits behind one commit each."""
        if getattr(self, "_data", None) is None:
            self._data = asyncio.Queue()
            self._drainer = asyncio.create_task(self._drain())
        return self._data

    async def _drain(self):
        while True:
            batch = [await self._data.get()]
            while not self._data.empty() and len(batch) < DRAIN_BATCH:
                batch.append(self._data.get_nowait())
            try:
                # Off the shared sync thread: one busy socket must not queue the others.
                results = await database_sync_to_async(execution.agent_data_batch, thread_sensitive=False)(
                    node=self.node, messages=batch)
            except Exception:  # a bug must not stop the socket: nothing was applied or acked
                log.exception("agent %s: applying %d messages failed", self.node.pk, len(batch))
                for message in batch:
                    await self._error("internal", "not applied; resend later", message.get("id"))
                continue
            for message, error in zip(batch, results, strict=True):
                if error is None:
                    await self.send(json.dumps({"type": "ack", "ack": message.get("id")}))
                else:
                    log.info("agent %s: %s", self.node.pk, error.message)
                    await self._error(error.code, error.message, message.get("id"))

    async def agent_forward(self, event):
        """A message for this node's agent from a task or service (after its commit)."""
        await self.send(json.dumps(event["message"]))
