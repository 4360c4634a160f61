import threading

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SCHEMA_KWARGS, SpectacularAPIView, SpectacularSwaggerView

from marketplace import agent_downloads, agent_http
from webapp import ops


class SchemaView(SpectacularAPIView):
    """One schema generation at a time: drf-spectacular loads its extensions lazily and not
    thread-safely, and a fresh server's first concurrent requests answered 500."""

    _lock = threading.Lock()

    @extend_schema(**SCHEMA_KWARGS)  # as the parent's get: the override dropped it (W002)
    def get(self, request, *args, **kwargs):
        with self._lock:
            return super().get(request, *args, **kwargs)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", ops.metrics_view, name="metrics"),  # /healthz and /readyz: webapp/ops.py
    path("api/v1/agent/assignments/<int:assignment_id>/dataset/", agent_downloads.dataset,
         name="agent-dataset"),
    path("api/v1/agent/assignments/<int:assignment_id>/weights/", agent_downloads.weights,
         name="agent-weights"),
    path("api/v1/agent/assignments/<int:assignment_id>/checkpoints/<int:step>/",
         agent_http.checkpoint, name="agent-checkpoint"),
    path("api/v1/agent/assignments/<int:assignment_id>/artifact/", agent_http.artifact,
         name="agent-artifact"),
    path("api/v1/agent/assignments/<int:assignment_id>/commitments/<int:step>/",
         agent_http.commitments, name="agent-commitments"),
    path("api/v1/agent/assignments/<int:assignment_id>/bundle/", agent_downloads.bundle,
         name="agent-bundle"),
    path("api/v1/", include("marketplace.api.urls")),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("", include("marketplace.views.urls")),
]

# Under /api/ these answer JSON in the API's error shape (docs/api.md), elsewhere Django's pages.
handler400 = "marketplace.api.exceptions.api_aware_bad_request"
handler404 = "marketplace.api.exceptions.api_aware_not_found"
handler500 = "marketplace.api.exceptions.api_aware_server_error"
