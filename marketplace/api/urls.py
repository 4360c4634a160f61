from django.urls import path
from rest_framework.routers import DefaultRouter

from . import (
    account,
    auth,
    checkpoints,
    datasets,
    jobs,
    market,
    organizations,
    registration,
    stake,
    uploads,
    wallets,
)

router = DefaultRouter()
router.register("templates", market.TemplateViewSet, basename="template")
router.register("offers", market.OfferViewSet, basename="offer")
router.register("nodes", market.NodeViewSet, basename="node")
router.register("jobs", jobs.JobViewSet, basename="job")
router.register("datasets", datasets.DatasetViewSet, basename="dataset")
router.register("uploads", uploads.UploadViewSet, basename="upload")
router.register("bundles", uploads.BundleViewSet, basename="bundle")
router.register("runtimes", uploads.RuntimeViewSet, basename="runtime")
router.register("wallets", wallets.WalletViewSet, basename="wallet")
router.register("stake", stake.StakeViewSet, basename="stake")
router.register("organizations", organizations.OrganizationViewSet, basename="organization")

app_name = "api"
urlpatterns = [
    path("auth/token/", auth.TokenView.as_view(), name="auth-token"),
    path("me/", auth.MeView.as_view(), name="me"),
    path("account/", account.AccountView.as_view(), name="account"),
    path("account/faucet/", account.FaucetView.as_view(), name="account-faucet"),
    path("jobs/<int:pk>/disputes/", account.JobDisputesView.as_view(), name="job-disputes"),
    path("jobs/<int:pk>/statement/<str:fmt>/", account.JobStatementFileView.as_view(),
         name="job-statement-file"),
    path("account/statements/<int:year>-<int:month>/<str:fmt>/", account.MonthStatementFileView.as_view(),
         name="account-statement-file"),
    path("jobs/<int:pk>/checkpoint/", checkpoints.JobCheckpointView.as_view(), name="job-checkpoint"),
    path("node-registrations/", registration.NodeRegistrationView.as_view(), name="node-registrations"),
    *router.urls,
]
