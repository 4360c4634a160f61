"""The REST API of jobs: submit (with Idempotency-Key), quote, list, show, cancel, fund,
budget, the model, metrics and the verification report. Scoped by selectors/ownership."""


from django.http import FileResponse, HttpResponse
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response

from ..errors import Conflict, MarketError
from ..selectors.accounts import organization_of, require_consumer
from ..selectors.execution import job_log_lines, job_metrics
from ..selectors.live import log_line
from ..selectors.ownership import JobAction, job_for, jobs_visible_to
from ..selectors.verification import job_model_downloadable, job_verification_report
from ..services import budget as budget_services
from ..services import funding
from ..services import jobs as job_services
from ..services.determinism import quote_verification
from ..services.job_spec import job_spec_validate, sync_traffic_ratio
from ..services.matching import quote_job
from . import serializers as s
from .common import AUTH, ID, IDEMPOTENCY_HEADER, _errors, _idempotent, _json_payload
from .filters import JobFilter
from .permissions import IsConsumer

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

    @extend_schema(summary="The job's output lines per rank (provider paths redacted)",
                   parameters=[OpenApiParameter("after", int, description="Only lines after this seq."),
                               OpenApiParameter("rank", int, description="Only this global rank."),
                               OpenApiParameter("q", str, description="Only lines containing this."),
                               OpenApiParameter("download", bool, description="As a plain-text file.")],
                   responses={200: OpenApiTypes.OBJECT, **_errors(400, 401, 404)})
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def logs(self, request, pk=None):
        """Lines in order, at most 1,000 a call (10,000 as a download): page on with the last
        line's seq as `after`. Rank null: the launcher's own line."""
        job = job_for(request.user, pk, JobAction.VIEW)
        params = request.query_params
        after, rank = _whole(params.get("after", "0"), "after"), params.get("rank", "")
        q = params.get("q", "")
        if len(q) > 200:
            raise MarketError("q must be at most 200 characters.", field="q")
        download = params.get("download") in ("1", "true")
        lines = job_log_lines(job, after_seq=after, rank=_whole(rank, "rank") if rank else None, q=q,
                              limit=10_000 if download else 1000)
        if download:
            text = "".join(f"[{'launcher' if x.rank is None else f'rank {x.rank}'}] {x.line}\n"
                           for x in lines)
            response = HttpResponse(text, content_type="text/plain; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="computemesh-job-{job.pk}-logs.txt"'
            return response
        return Response({"lines": [log_line(x) for x in lines]})

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
                                           "traffic_vs_ddp": ratio,
                                           "verification": quote_verification(spec=spec)}).data)


def _whole(value: str, field: str) -> int:
    """A query parameter that must be a whole number 0 or more: else a 400 that names it."""
    if not value.isdigit() or len(value) > 12:
        raise MarketError(f"{field} must be a whole number, 0 or more.", field=field)
    return int(value)
