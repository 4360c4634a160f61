"""WebSocket routes: agents' sockets apart from people's."""

from django.urls import path

from .consumers.agent import AgentConsumer
from .consumers.dashboard import DashboardConsumer, MarketConsumer
from .consumers.jobs import JobConsumer

# Authenticated by their node's token in the consumer itself: no session or user lookup.
agent_urlpatterns = [
    path("ws/agent/", AgentConsumer.as_asgi()),
]

# Browsers (their session) and API clients (an API token).
websocket_urlpatterns = [
    path("ws/jobs/<int:job_id>/", JobConsumer.as_asgi()),
    path("ws/dashboard/", DashboardConsumer.as_asgi()),
    path("ws/market/", MarketConsumer.as_asgi()),
]
