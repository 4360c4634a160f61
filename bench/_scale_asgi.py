"""The platform's ASGI application plus a trivial echo socket, /ws/echo/, in the same server
process: bench/agent_scale.py measures its simulated agents against the echo (the server
and the socket alone) beside the platform's /ws/agent/ in the same run.

    daphne -p 8000 _scale_asgi:application     (with bench/ on PYTHONPATH)

Benchmark only: the production application (webapp/asgi.py) has no such route."""

import json

from webapp.asgi import application as platform


async def echo(scope, receive, send) -> None:
    """Answers every text frame at once with the acknowledgement a heartbeat gets."""
    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif event["type"] == "websocket.receive":
            try:
                ref = json.loads(event.get("text") or "{}").get("id")
            except ValueError:
                ref = None
            await send({"type": "websocket.send", "text": json.dumps({"type": "heartbeat.ack", "ref": ref})})
        elif event["type"] == "websocket.disconnect":
            return


async def application(scope, receive, send) -> None:
    if scope["type"] == "websocket" and scope["path"] == "/ws/echo/":
        await echo(scope, receive, send)
    else:
        await platform(scope, receive, send)
