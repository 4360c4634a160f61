from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from marketplace import agent_http

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/agent/assignments/<int:assignment_id>/dataset/", agent_http.dataset,
         name="agent-dataset"),
    path("api/v1/agent/assignments/<int:assignment_id>/checkpoints/<int:step>/",
         agent_http.checkpoint, name="agent-checkpoint"),
    path("api/v1/agent/assignments/<int:assignment_id>/artifact/", agent_http.artifact,
         name="agent-artifact"),
    path("api/v1/", include("marketplace.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("", include("marketplace.views.urls")),
]
