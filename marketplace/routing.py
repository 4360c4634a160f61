"""WebSocket routes."""

from django.urls import path

from .consumers.agent import AgentConsumer
from .consumers.dashboard import DashboardConsumer, MarketConsumer
from .consumers.jobs import JobConsumer

websocket_urlpatterns = [
    path("ws/agent/", AgentConsumer.as_asgi()),
    path("ws/jobs/<int:job_id>/", JobConsumer.as_asgi()),
    path("ws/dashboard/", DashboardConsumer.as_asgi()),
    path("ws/market/", MarketConsumer.as_asgi()),
]
