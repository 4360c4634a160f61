"""What all our sockets share."""

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer


class LiveConsumer(AsyncWebsocketConsumer):
    """Channels closes stale database connections before every message it dispatches, with a
    hop through the process's one shared sync thread: thousands a second on a busy server,
    all queued on that thread. Our handlers reach the database only through
    database_sync_to_async, which closes stale connections itself, so dispatch goes straight
    to the handler."""

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)
