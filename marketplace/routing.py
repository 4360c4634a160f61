"""WebSocket routes."""

from django.urls import path

from .consumers.agent import AgentConsumer
from .consumers.jobs import JobConsumer

websocket_urlpatterns = [
    path("ws/agent/", AgentConsumer.as_asgi()),
    path("ws/jobs/<int:job_id>/", JobConsumer.as_asgi()),
]
