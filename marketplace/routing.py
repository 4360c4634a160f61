"""WebSocket routes."""

from django.urls import path

from .consumers.agent import AgentConsumer

websocket_urlpatterns = [
    path("ws/agent/", AgentConsumer.as_asgi()),
]
