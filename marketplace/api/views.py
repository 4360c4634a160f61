"""The REST API: thin views that parse with a serializer, call a service or a selector,
and render. Every queryset is scoped to the caller by a selector; errors are shaped by
marketplace.api.exceptions."""

import hashlib
import json
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import authenticate
from django.http import FileResponse
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from eth_utils import is_address, to_checksum_address
from rest_framework import mixins, status, viewsets
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, Throttled, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import catalogue
from ..chain.client import chain_id
from ..errors import Conflict, MarketError
from ..models import Dataset
from ..selectors.accounts import membership_of, organization_of, require_consumer, require_provider
from ..selectors.execution import job_metrics
from ..selectors.market import nodes_of_provider, offers_of_provider, offers_visible_to
from ..selectors.ownership import JobAction, job_for, jobs_visible_to
from ..selectors.payments import wallets_of
from ..selectors.verification import job_model_downloadable, job_verification_report
from ..services import budget as budget_services
from ..services import datasets as dataset_services
from ..services import funding, idempotency, login_throttle
from ..services import jobs as job_services
from ..services import nodes as node_services
from ..services import offers as offer_services
from ..services import wallets as wallet_services
from ..services.job_spec import job_spec_validate, sync_traffic_ratio
from ..services.matching import quote_job
from . import serializers as s
from .filters import MAX_INT, JobFilter, OfferFilter
from .pagination import IdSubqueryPagination
from .parsers import DepthLimitedJSONParser
from .permissions import IsConsumer, IsProvider

ERRORS = {code: OpenApiResponse(s.ErrorSerializer, description=text) for code, text in {
    400: "Invalid input; `field` names it.", 401: "Not authenticated.",
    403: "Not allowed for your organization.", 404: "Not found (or not yours).",
    409: "Not possible in the object's current state.", 413: "The body is too large.",
    422: "This Idempotency-Key was used for a different request.",
    429: "Too many attempts; `Retry-After` says when to try again.",
    503: "The chain node did not answer or refused the transaction; nothing was paid.",
}.items()}
ID = r"\d{1,18}"
# Token first: its WWW-Authenticate header makes "not logged in" a 401, not a 403.
AUTH = [TokenAuthentication, SessionAuthentication]


# The filters' bounds, which django-filter does not put into the schema.
OFFER_FILTER_SCHEMAS = [
    OpenApiParameter("min_gpus", {"type": "integer", "minimum": 1, "maximum": MAX_INT},
                     description="At least this many free GPUs (CPU slots for cpu)."),
    OpenApiParameter("min_gpu_memory_gb", {"type": "integer", "minimum": 0, "maximum": MAX_INT},
                     description="Memory per GPU, GB, at least."),
    OpenApiParameter("max_price", {"type": "string", "pattern": r"^[0-9]{1,14}(\.[0-9]{1,6})?$"},
                     description="Price per GPU-hour in tUSD, at most (more than 0, 6 places)."),
    OpenApiParameter("min_reliability", {"type": "string",
                                         "pattern": r"^(0(\.[0-9]{1,4})?|1(\.0{1,4})?)$"},
                     description="Share 0–1 (4 places); excludes new nodes."),
]


def _errors(*codes: int) -> dict:
    return {code: ERRORS[code] for code in codes}


# --- Auth ----------------------------------------------------------------------------

class TokenView(APIView):
    """Exchange a username and password for an API token (`Authorization: Token <key>`)."""

    permission_classes = [AllowAny]
    authentication_classes: list = []
    parser_classes = [DepthLimitedJSONParser, FormParser]

    @extend_schema(request=s.TokenRequestSerializer,
                   responses={200: s.TokenSerializer, **_errors(400, 429)}, auth=[])
    def post(self, request):
        data = s.TokenRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # The login page's throttle too (services/login_throttle.py): by account and address.
        username, address = data.validated_data["username"], login_throttle.client_address(request)
        if wait := login_throttle.login_wait(username=username, address=address):
            raise Throttled(wait=wait, detail=login_throttle.wait_message(wait))
        user = authenticate(request=request._request, username=username,
                            password=data.validated_data["password"])
        if user is None or not user.is_active:
            login_throttle.login_failed(username=username, address=address)
            raise ValidationError({"non_field_errors": [
                "Unable to log in with that username and password."]}, code="authorization")
        login_throttle.login_succeeded(username=username)
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})


# --- The caller ----------------------------------------------------------------------

class MeView(APIView):
    """Who the token belongs to: the user, the organization and the role in it."""

    authentication_classes = AUTH
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="Who you are", responses={200: s.MeSerializer, **_errors(401)})
    def get(self, request):
        member = membership_of(request.user)
        org = member.organization if member is not None else None
        return Response(s.MeSerializer({
            "username": request.user.get_username(), "is_staff": request.user.is_staff,
            "organization": org, "role": member.role if member is not None else None}).data)


# --- Idempotency-Key ------------------------------------------------------------------

IDEMPOTENCY_HEADER = OpenApiParameter(
    idempotency.HEADER, {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY,
                         "pattern": r"^[ -~]*[!-~][ -~]*$"}, OpenApiParameter.HEADER, required=False,
    description="Your unique key for this request (a UUID). Sent again within 24 hours with "
                "the same request, it returns the first response (with `Idempotent-Replayed: "
                "true`) and creates nothing; with a different request it is refused (422).")


def _idempotent(request, payload: Callable[[], bytes], respond: Callable[[], Response]) -> Response:
    """`respond()` once per Idempotency-Key (services/idempotency.py); without the header,
    just `respond()`."""
    raw = request.headers.get(idempotency.HEADER)
    if raw is None:
        return respond()
    key = idempotency.idempotency_key_check(raw)
    fingerprint = idempotency.request_fingerprint(method=request.method, path=request.path,
                                                  body=payload())

    def call() -> tuple[int, object]:
        response = respond()
        return response.status_code, response.data

    code, body, replayed = idempotency.idempotent_call(user=request.user, key=key,
                                                       fingerprint=fingerprint, call=call)
    response = Response(body, status=code)
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def _json_payload(data) -> bytes:
    # The parsed body, canonical: the same JSON sent with other spacing or key order is the
    # same request.
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def _multipart_payload(data) -> bytes:
    # A multipart body's boundary changes with every send: its fields and each file's
    # name and SHA-256 stand for it.
    parts: dict[str, list] = {}
    for name in sorted(data.keys()):
        for value in data.getlist(name):
            if hasattr(value, "chunks"):
                digest = hashlib.sha256()
                for chunk in value.chunks():
                    digest.update(chunk)
                value.seek(0)
                value = {"file": value.name, "sha256": digest.hexdigest()}
            parts.setdefault(name, []).append(value)
    return _json_payload(parts)


# --- Templates -----------------------------------------------------------------------

@extend_schema_view(
    list=extend_schema(summary="Training templates", responses=s.TemplateSerializer(many=True)),
    retrieve=extend_schema(summary="One training template",
                           responses={200: s.TemplateSerializer, **_errors(404)}),
)
class TemplateViewSet(viewsets.ViewSet):
    authentication_classes = AUTH
    permission_classes = [AllowAny]
    lookup_field = "name"
    lookup_value_regex = r"[a-z0-9-]{1,64}"
    serializer_class = s.TemplateSerializer

    def list(self, request):
        return Response(s.TemplateSerializer(catalogue.templates().values(), many=True).data)

    def retrieve(self, request, name: str):
        template = catalogue.templates().get(name)
        if template is None:
            raise NotFound(f"No template named '{name}'.")
        return Response(s.TemplateSerializer(template).data)


# --- Offers --------------------------------------------------------------------------

@extend_schema_view(
    list=extend_schema(summary="Search offers (public)", parameters=OFFER_FILTER_SCHEMAS),
    retrieve=extend_schema(summary="One offer", responses={200: s.OfferSerializer,
                                                           **_errors(404)}),
    create=extend_schema(summary="List one of your nodes' GPUs for rent",
                         request=s.OfferWriteSerializer,
                         responses={201: s.OfferSerializer, **_errors(400, 401, 403)}),
    update=extend_schema(request=s.OfferWriteSerializer,
                         responses={200: s.OfferSerializer, **_errors(400, 401, 403, 404)}),
    partial_update=extend_schema(request=s.OfferWriteSerializer,
                                 responses={200: s.OfferSerializer,
                                            **_errors(400, 401, 403, 404)}),
)
class OfferViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    authentication_classes = AUTH
    serializer_class = s.OfferSerializer

    def get_serializer_class(self):
        return s.OfferListSerializer if self.action in ("list", "mine") else s.OfferSerializer
    filter_backends = [DjangoFilterBackend]
    filterset_class = OfferFilter
    pagination_class = IdSubqueryPagination
    lookup_value_regex = ID
    http_method_names = ["get", "post", "put", "patch", "head", "options"]

    def get_permissions(self):
        if self.action in ("list", "retrieve"):
            return [AllowAny()]
        return [IsProvider()]

    def get_queryset(self):
        if self.action == "list":
            # The public search: active offers only, even for their provider.
            qs = offers_visible_to(None)
        elif self.action == "retrieve":
            qs = offers_visible_to(self.request.user)
        else:
            qs = offers_of_provider(self.request.user)
        return qs.select_related("node", "provider")

    def _render(self, offer, code=status.HTTP_200_OK) -> Response:
        offer = offers_of_provider(self.request.user).select_related("node", "provider").get(
            pk=offer.pk)
        return Response(s.OfferSerializer(offer).data, status=code)

    def create(self, request):
        provider = require_provider(request.user)
        data = s.OfferWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node = nodes_of_provider(request.user).filter(pk=data.validated_data["node"]).first()
        if node is None:
            raise ValidationError({"node": ["No node of yours has that id."]})
        offer = offer_services.offer_create(provider=provider, node=node, spec=data.to_spec())
        return self._render(offer, status.HTTP_201_CREATED)

    def update(self, request, pk=None, partial=False):
        provider = require_provider(request.user)
        offer = self.get_object()
        data = s.OfferWriteSerializer(offer, data=request.data, partial=partial)
        data.is_valid(raise_exception=True)
        offer = offer_services.offer_update(provider=provider, offer=offer,
                                            spec=data.to_spec(offer))
        return self._render(offer)

    def partial_update(self, request, pk=None):
        return self.update(request, pk, partial=True)

    def _set_status(self, status_value: str) -> Response:
        provider = require_provider(self.request.user)
        offer = offer_services.offer_set_status(provider=provider, offer=self.get_object(),
                                                status=status_value)
        return self._render(offer)

    @extend_schema(summary="Your organization's offers, paused ones included",
                   parameters=OFFER_FILTER_SCHEMAS,
                   responses={200: s.OfferListSerializer(many=True), **_errors(400, 401, 403)})
    @action(detail=False, methods=["get"])
    def mine(self, request):
        """The provider's own offers in any status (`status` says which), with the search's
        filters and ordering; the public search lists active offers only."""
        return self.list(request)

    @extend_schema(request=None, responses={200: s.OfferSerializer,
                                            **_errors(401, 403, 404)})
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        """Take the offer off the market; running jobs keep their reservations."""
        return self._set_status("paused")

    @extend_schema(request=None, responses={200: s.OfferSerializer,
                                            **_errors(401, 403, 404)})
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._set_status("active")


# --- Nodes ---------------------------------------------------------------------------

@extend_schema_view(
    list=extend_schema(summary="Your nodes"),
    retrieve=extend_schema(responses={200: s.NodeSerializer, **_errors(401, 403, 404)}),
    create=extend_schema(summary="Register a machine; the response carries its agent token once",
                         request=s.NodeWriteSerializer,
                         responses={201: s.NodeWithTokenSerializer, **_errors(400, 401, 403)}),
    update=extend_schema(request=s.NodeWriteSerializer,
                         responses={200: s.NodeSerializer, **_errors(400, 401, 403, 404)}),
    partial_update=extend_schema(request=s.NodeWriteSerializer,
                                 responses={200: s.NodeSerializer,
                                            **_errors(400, 401, 403, 404)}),
)
class NodeViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    authentication_classes = AUTH
    serializer_class = s.NodeSerializer
    permission_classes = [IsProvider]
    lookup_value_regex = ID
    http_method_names = ["get", "post", "put", "patch", "head", "options"]

    def get_queryset(self):
        return nodes_of_provider(self.request.user).order_by("name", "id")

    def create(self, request):
        provider = require_provider(request.user)
        data = s.NodeWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node, token = node_services.node_create(provider=provider, spec=data.to_spec(),
                                                actor=request.user)
        body = s.NodeWithTokenSerializer(node, context={"agent_token": token}).data
        return Response(body, status=status.HTTP_201_CREATED)

    def update(self, request, pk=None, partial=False):
        node = self.get_object()
        data = s.NodeWriteSerializer(data=request.data, partial=partial)
        data.is_valid(raise_exception=True)
        node = node_services.node_update(node=node, spec=data.to_spec(node), actor=request.user)
        return Response(s.NodeSerializer(node).data)

    def partial_update(self, request, pk=None):
        return self.update(request, pk, partial=True)

    @extend_schema(request=None, responses={200: s.NodeWithTokenSerializer,
                                            **_errors(401, 403, 404)})
    @action(detail=True, methods=["post"], url_path="rotate-token")
    def rotate_token(self, request, pk=None):
        """Issue a new agent token (shown this once); the old one stops working."""
        node = self.get_object()
        token = node_services.node_rotate_token(node=node, actor=request.user)
        return Response(s.NodeWithTokenSerializer(node, context={"agent_token": token}).data)


# --- Jobs ----------------------------------------------------------------------------

@extend_schema_view(
    list=extend_schema(summary="Your organization's jobs", responses=s.JobListSerializer(many=True)),
    retrieve=extend_schema(summary="One job with its timeline",
                           responses={200: s.JobDetailSerializer, **_errors(401, 404)}),
    create=extend_schema(summary="Submit a job", request=s.JobSpecSerializer,
                         parameters=[IDEMPOTENCY_HEADER],
                         responses={201: s.JobDetailSerializer, **_errors(400, 401, 403, 422)}),
)
class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    authentication_classes = AUTH
    lookup_value_regex = ID
    filter_backends = [DjangoFilterBackend]
    filterset_class = JobFilter

    def get_permissions(self):
        if self.action == "quote":
            return [AllowAny()]
        if self.action == "create":
            return [IsConsumer()]
        return [IsAuthenticated()]

    def get_serializer_class(self):
        if self.action == "list":
            return s.JobListSerializer
        if self.action in ("create", "quote"):
            return s.JobSpecSerializer
        return s.JobDetailSerializer

    def get_queryset(self):
        qs = jobs_visible_to(self.request.user)
        if self.action != "list":
            qs = qs.prefetch_related("events")
        return qs

    def _render(self, job, code=status.HTTP_200_OK) -> Response:
        job = jobs_visible_to(self.request.user).prefetch_related("events").get(pk=job.pk)
        return Response(s.JobDetailSerializer(job).data, status=code)

    def create(self, request):
        owner = require_consumer(request.user)

        def submit() -> Response:
            data = s.JobSpecSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            job = job_services.job_submit(owner=owner, spec=data.to_spec(), actor=request.user)
            return self._render(job, status.HTTP_201_CREATED)

        return _idempotent(request, lambda: _json_payload(request.data), submit)

    @extend_schema(request=None, responses={200: s.JobDetailSerializer,
                                            **_errors(401, 404, 409)})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel a job that has not finished."""
        job = job_services.job_cancel(job=self.get_object(), actor=request.user)
        return self._render(job)

    def _own_job(self, request, pk):
        """The caller's organization's job (funding is the owner's business, not staff's)."""
        require_consumer(request.user)
        return job_for(request.user, pk, JobAction.OWN)

    @extend_schema(summary="Fund the job's escrow from the organization's custodial wallet",
                   request=s.FundSerializer, responses={200: s.JobDetailSerializer,
                                                        **_errors(400, 401, 403, 404, 409, 503)})
    @action(detail=True, methods=["post"])
    def fund(self, request, pk=None):
        """Approve and fund the escrow with the job's budget (development wallets). A wallet
        in the browser funds with `fund-calls` instead; the job starts once the chain says so."""
        job = self._own_job(request, pk)
        data = s.FundSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        funding.job_fund(job=job, actor=request.user, amount=data.validated_data.get("amount"))
        return self._render(job)

    @extend_schema(summary="Raise the job's budget", request=s.BudgetSerializer,
                   responses={200: s.JobDetailSerializer, **_errors(400, 401, 403, 404, 409)})
    @action(detail=True, methods=["post"])
    def budget(self, request, pk=None):
        """Set a higher total budget. Without the escrow, a job paused at its budget resumes
        from its checkpoint; with it, top the escrow up next (`fund`, or `fund-calls` for a
        browser wallet). Idempotent: the body is the new total."""
        job = self._own_job(request, pk)
        data = s.BudgetSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = budget_services.job_budget_raise(job=job, budget=data.validated_data["budget"],
                                               actor=request.user)
        return self._render(job)

    @extend_schema(summary="The transactions a browser wallet sends to fund the escrow",
                   parameters=[OpenApiParameter(
                       "address", str, description="The organization's wallet that sends them (default: "
                       "its only linked wallet); the fund call is signed for it alone.")],
                   request=None,
                   responses={200: OpenApiTypes.OBJECT, **_errors(400, 401, 403, 404, 409, 503)})
    @action(detail=True, methods=["get"], url_path="fund-calls")
    def fund_calls(self, request, pk=None):
        """`approve` (the token) then `fund` (the escrow): {to, data} each, for
        `eth_sendTransaction` through the wallet's EIP-1193 provider, from `address`: the fund
        call carries the operator's signature of the job's terms for that wallet only."""
        job = self._own_job(request, pk)
        if job.status != job.Status.SUBMITTED and not funding.top_up_due(job):
            raise Conflict(f"Job #{job.pk} is {job.get_status_display().lower()}; only a submitted "
                           "job is funded.")
        return Response(funding.fund_calls(job, address=request.query_params.get("address")))

    @extend_schema(summary="Download the trained model", request=None,
                   responses={(200, "application/octet-stream"): OpenApiTypes.BINARY,
                              **_errors(401, 404, 409)})
    @action(detail=True, methods=["get"])
    def artifact(self, request, pk=None):
        """The trained model (a PyTorch state dict with its template and metric), once the
        work behind it passed verification (the job is completed or settled)."""
        job = self.get_object()
        if not job.artifact:
            raise NotFound("This job has no trained model yet.")
        if not job_model_downloadable(job, request.user):
            raise Conflict(f"Job #{job.pk} is {job.get_status_display().lower()}; its model can be "
                           "downloaded once its verification has passed.")
        return FileResponse(job.artifact.open("rb"), as_attachment=True,
                            filename=f"computemesh-job-{job.pk}-model.pt")

    @extend_schema(summary="The verification report (JSON, as a download)", request=None,
                   responses={200: OpenApiTypes.OBJECT, **_errors(401, 404)})
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def verification(self, request, pk=None):
        """Each verified attempt: the replayed segments with their distances, the held-out
        metric reported and measured, what failed and the disputes it opened."""
        job = self.get_object()
        response = Response(job_verification_report(job))
        response["Content-Disposition"] = f'attachment; filename="computemesh-job-{job.pk}-verification.json"'
        return response

    @extend_schema(summary="Progress points after a sequence number (for resync)",
                   parameters=[OpenApiParameter("after_seq", int, description="Only later points.")],
                   responses={200: s.MetricPointSerializer(many=True), **_errors(400, 401, 404)})
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def metrics(self, request, pk=None):
        job = self.get_object()
        try:
            after = int(request.query_params.get("after_seq", 0))
        except ValueError:
            raise MarketError("after_seq must be a whole number.", field="after_seq") from None
        if after < 0:
            raise MarketError("after_seq must be 0 or more.", field="after_seq")
        return Response(s.MetricPointSerializer(job_metrics(job, after_seq=after), many=True).data)

    @extend_schema(summary="Which offers would take this job now, at what cost, and if none, "
                           "why", request=s.JobSpecSerializer,
                   responses={200: s.QuoteSerializer, **_errors(400)})
    @action(detail=False, methods=["post"])
    def quote(self, request):
        data = s.JobSpecSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        spec = job_spec_validate(spec=data.to_spec(), owner=organization_of(request.user))
        ratio = sync_traffic_ratio(spec.sync, nodes=spec.nodes, gpus_per_node=spec.gpus_per_node)
        return Response(s.QuoteSerializer({**quote_job(spec=spec).as_dict(), "sync": spec.sync,
                                           "traffic_vs_ddp": ratio}).data)


# --- Wallets -------------------------------------------------------------------------

@extend_schema_view(
    list=extend_schema(summary="Your organization's wallets", responses={
        200: s.WalletSerializer(many=True), **_errors(401)}),
)
class WalletViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Wallets are linked with Sign-In with Ethereum (EIP-4361): get a nonce, build the
    message in the browser, have the wallet `personal_sign` it, post both to `link`."""

    authentication_classes = AUTH
    permission_classes = [IsAuthenticated]
    serializer_class = s.WalletSerializer
    pagination_class = None
    lookup_value_regex = ID

    def get_queryset(self):
        return wallets_of(self.request.user)

    def list(self, request, *args, **kwargs):
        org = organization_of(request.user)
        if org is not None:  # a payout change whose delay is over shows as made
            wallet_services.payout_changes_apply(organization=org)
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="A Sign-In with Ethereum nonce (valid once, for a few minutes)",
                   parameters=[OpenApiParameter("address", str, required=False, description=(
                       "The wallet's address; answered back EIP-55 checksummed for the message."))],
                   responses={200: s.SiweNonceSerializer, **_errors(400, 401)})
    @action(detail=False, methods=["get"], url_path="siwe-nonce")
    def siwe_nonce(self, request):
        address = request.query_params.get("address") or None
        if address is not None:
            if not is_address(address):
                raise MarketError("address is not an Ethereum address.", field="address")
            address = to_checksum_address(address)
        cid = chain_id()
        nonce = wallet_services.siwe_nonce_issue(user=request.user)
        host = request.get_host()
        return Response(s.SiweNonceSerializer({
            "nonce": nonce.nonce, "expires_at": nonce.expires_at, "domain": host,
            "uri": f"{request.scheme}://{host}/wallets/", "chain_id": cid,
            "statement": wallet_services.SIWE_STATEMENT, "address": address}).data)

    @extend_schema(summary="Link the wallet that signed a Sign-In with Ethereum message",
                   request=s.WalletLinkSerializer,
                   responses={201: s.WalletSerializer, 200: s.WalletSerializer,
                              **_errors(400, 401, 403, 409, 503)})
    @action(detail=False, methods=["post"])
    def link(self, request):
        """Checks the domain (this host), the URI, the chain, the nonce (yours, unused,
        unexpired), the expiration and the signature. 201 with the new wallet; 200 if your
        organization had it already; 409 if another organization has it."""
        data = s.WalletLinkSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        wallet, created = wallet_services.wallet_link(
            user=request.user, message=data.validated_data["message"],
            signature=data.validated_data["signature"], domain=request.get_host())
        wallet = wallets_of(request.user).get(pk=wallet.pk)
        return Response(s.WalletSerializer(wallet).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(summary="Be paid to this wallet (providers' admins)", request=None,
                   responses={200: s.PayoutChangeSerializer, 202: s.PayoutChangeSerializer,
                              **_errors(401, 403, 404)})
    @action(detail=True, methods=["post"])
    def payout(self, request, pk=None):
        """Only an admin of the organization may. The change takes effect after
        PAYOUT_CHANGE_DELAY_S (202, with `effective_at`); settlements until then pay the
        current wallet. Asking for the current payout wallet cancels a pending change (200)."""
        org = require_provider(request.user)
        change = wallet_services.wallet_set_payout(wallet=self.get_object(), actor=request.user)
        return Response(_payout_state(org), status=status.HTTP_202_ACCEPTED if change else status.HTTP_200_OK)

    @extend_schema(summary="Where your organization is paid, and a pending change",
                   responses={200: s.PayoutChangeSerializer, **_errors(401, 403)})
    @action(detail=False, methods=["get"], url_path="payout")
    def payout_state(self, request):
        return Response(_payout_state(require_provider(request.user)))


def _payout_state(org) -> dict:
    address = wallet_services.payout_address(org)
    change = wallet_services.payout_change_pending(org)
    return s.PayoutChangeSerializer({
        "payout_address": address, "pending_address": change.wallet.address if change else None,
        "effective_at": change.effective_at if change else None,
        "requested_by": change.requested_by.get_username() if change and change.requested_by else None,
    }).data


# --- Datasets ------------------------------------------------------------------------

class UploadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The upload is too large."
    default_code = "too_large"


class BoundedMultiPartParser(MultiPartParser):
    """Refuses, before reading it, a body that cannot hold an acceptable dataset."""

    limit_setting = "DATASET_MAX_BYTES"

    def parse(self, stream, media_type=None, parser_context=None):
        request = parser_context["request"]
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        most = getattr(settings, self.limit_setting)
        limit = most + 64 * 1024  # room for the multipart envelope
        if length > limit:
            raise UploadTooLarge(f"file: the upload is larger than the "
                                 f"{most // 1_048_576} MB limit.")
        return super().parse(stream, media_type, parser_context)


@extend_schema_view(
    list=extend_schema(summary="Your organization's datasets"),
    create=extend_schema(summary="Upload a CSV dataset", request={
        "multipart/form-data": s.DatasetUploadSerializer}, parameters=[IDEMPOTENCY_HEADER],
        responses={201: s.DatasetSerializer, **_errors(400, 401, 403, 413, 422)}),
    destroy=extend_schema(summary="Delete a dataset and its stored file",
                          responses={204: None, **_errors(401, 403, 404, 409)}),
)
class DatasetViewSet(mixins.ListModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    authentication_classes = AUTH
    serializer_class = s.DatasetSerializer
    permission_classes = [IsConsumer]
    parser_classes = [BoundedMultiPartParser]
    lookup_value_regex = ID

    def get_queryset(self):
        org = organization_of(self.request.user)
        return org.datasets.all() if org is not None else Dataset.objects.none()

    def create(self, request):
        owner = require_consumer(request.user)

        def upload() -> Response:
            data = s.DatasetUploadSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            dataset = dataset_services.dataset_upload(
                owner=owner, actor=request.user, uploaded_file=data.validated_data["file"],
                name=data.validated_data.get("name", ""),
                label_column=data.validated_data.get("label_column", ""))
            return Response(s.DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)

        return _idempotent(request, lambda: _multipart_payload(request.data), upload)

    def get_object(self) -> Dataset:
        dataset = self.get_queryset().filter(pk=self.kwargs["pk"]).first()
        if dataset is None:
            raise NotFound("No dataset with that id among your organization's datasets.")
        return dataset

    def destroy(self, request, pk=None):
        """Only your organization's datasets (another's is not found); refused (409) while
        a job that has not finished uses it."""
        dataset_services.dataset_delete(dataset=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


