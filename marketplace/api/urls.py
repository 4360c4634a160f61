from django.urls import path
from rest_framework.routers import DefaultRouter

from . import organizations, stake, views

router = DefaultRouter()
router.register("templates", views.TemplateViewSet, basename="template")
router.register("offers", views.OfferViewSet, basename="offer")
router.register("nodes", views.NodeViewSet, basename="node")
router.register("jobs", views.JobViewSet, basename="job")
router.register("datasets", views.DatasetViewSet, basename="dataset")
router.register("wallets", views.WalletViewSet, basename="wallet")
router.register("stake", stake.StakeViewSet, basename="stake")
router.register("organizations", organizations.OrganizationViewSet, basename="organization")

app_name = "api"
urlpatterns = [
    path("auth/token/", views.TokenView.as_view(), name="auth-token"),
    path("me/", views.MeView.as_view(), name="me"),
    *router.urls,
]
