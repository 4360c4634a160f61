"""The agent socket, /ws/agent/: one per provider node, authenticated by its token."""

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
            try:
                await database_sync_to_async(execution.agent_data)(node=self.node, message=message)
            except execution.AgentMessageError as exc:
                log.info("agent %s: %s", self.node.pk, exc.message)
                await self._error(exc.code, exc.message, ref)
                return
            out = [{"type": "ack", "ack": ref}]
        for item in out:
            await self.send(json.dumps(item))

    async def agent_forward(self, event):
        """A message for this node's agent from a task or service (after its commit)."""
        await self.send(json.dumps(event["message"]))
