"""WebSocket routes (live progress, dashboards and the agent socket come with later work)."""

websocket_urlpatterns: list = []
