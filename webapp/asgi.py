"""ASGI entry point: HTTP goes to Django; WebSockets are origin-checked and authenticated."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
# Django must be set up before anything imports models (the WebSocket routes do).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from marketplace.consumers.auth import TokenAuthMiddleware  # noqa: E402
from marketplace.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)

# Everything imported so far lives as long as the process: keep it out of the cyclic
# garbage collector's full passes, which walked the whole Django heap and were the live
# progress latency's tail (max 150-245 ms -> 37-53 ms at 1,000 messages a second,
# bench/progress_latency.py; docs/BENCHMARKS.md).
gc.freeze()
