"""ASGI entry point: HTTP goes to Django; WebSockets are origin-checked and authenticated."""

import gc
import os
import sys

from django.core.asgi import get_asgi_application
from django.urls import get_resolver, re_path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
# Django must be set up before anything imports models (the WebSocket routes do).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from marketplace.consumers.auth import TokenAuthMiddleware  # noqa: E402
from marketplace.routing import agent_urlpatterns, websocket_urlpatterns  # noqa: E402
from webapp.limits import RequestLimits, daphne_limits  # noqa: E402
from webapp.ops import WebSocketMetrics  # noqa: E402

if "twisted.web.http" in sys.modules:
    # Served by daphne: refuse oversized bodies before Twisted reads them into memory, and
    # answer overlong request lines instead of dropping the connection (webapp/limits.py).
    daphne_limits()

application = ProtocolTypeRouter(
    {
        "http": RequestLimits(django_asgi_app),
        "websocket": WebSocketMetrics(AllowedHostsOriginValidator(URLRouter([
            # Agents skip the session and user middleware: each handshake through it was a hop
            # through the process's one shared sync thread, where a fleet connecting at once
            # queued (bench/agent_scale.py). The agent consumer checks the node's token itself.
            *agent_urlpatterns,
            re_path(r"", AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))),
        ]))),
    }
)

# Everything imported so far lives as long as the process: keep it out of the cyclic
# garbage collector's full passes, which walked the whole Django heap and were the live
# progress latency's tail (max 150-245 ms -> 37-53 ms at 1,000 messages a second,
# bench/progress_latency.py; docs/BENCHMARKS.md). The URL conf (every view, serializer
# and filter module) is otherwise imported by the first request, after the freeze: ~70k
# objects left in the collector's reach, full passes of 40-90 ms in the offer search under
# load (bench/offer_search.py); imported here, they are frozen with the rest.
get_resolver().url_patterns  # noqa: B018 - loads the URL conf
gc.freeze()
