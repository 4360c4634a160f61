"""The organization's money over the API (its balances and movements; the development
faucet) and consumers' disputes of their finished jobs. Every call acts on the caller's own
organization; a job of another organization is a 404, as everywhere."""

from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from ..errors import PermissionDenied
from ..models import ConsumerDispute
from ..money import exact
from ..selectors.account import account_balances, account_movements, jobs_with_statement
from ..selectors.accounts import organization_of
from ..selectors.ownership import JobAction, jobs_for
from ..selectors.statements import (
    job_statement_csv,
    job_statement_pdf,
    month_statement_csv,
    month_statement_pdf,
)
from ..services.disputes import MAX_REASON, consumer_dispute_open
from ..services.faucet import faucet_claim
from .permissions import IsConsumer

AUTH = [TokenAuthentication, SessionAuthentication]


def _org(request):
    org = organization_of(request.user)
    if org is None:
        raise PermissionDenied("Join or create an organization first.")
    return org


Account = inline_serializer("Account", {
    "available": serializers.CharField(allow_null=True), "wallet": serializers.CharField(allow_null=True),
    "credited": serializers.CharField(allow_null=True), "escrowed": serializers.CharField(),
    "spent": serializers.CharField(), "refunded": serializers.CharField(), "earned": serializers.CharField(),
    "earning": serializers.CharField(), "movements": serializers.ListField(child=serializers.DictField())})


class AccountView(APIView):
    """GET /api/v1/account/: balances (tUSD, 6 decimals) and every money movement."""

    authentication_classes = AUTH
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="Your organization's balances and money movements", responses={200: Account})
    def get(self, request):
        org = _org(request)
        b = account_balances(org)
        return Response({
            "available": exact(b.available) or None, "wallet": exact(b.wallet) or None,
            "credited": exact(b.credited) or None, "escrowed": exact(b.escrowed), "spent": exact(b.spent),
            "refunded": exact(b.refunded), "earned": exact(b.earned), "earning": exact(b.earning),
            "movements": [{"at": m.at.isoformat(), "kind": m.kind, "description": m.label,
                           "amount": exact(m.amount) or None, "available_change": exact(m.available),
                           "escrow_change": exact(m.escrow), "job": m.job_id, "pending": m.pending,
                           "transaction": m.tx_hash or None}
                          for m in account_movements(org)[:1000]],
        })


Grant = inline_serializer("FaucetGrant", {"amount": serializers.CharField(),
                                          "address": serializers.CharField(),
                                          "transaction": serializers.CharField()})


class FaucetView(APIView):
    """POST /api/v1/account/faucet/: test tUSD for the custodial wallet (development chains)."""

    authentication_classes = AUTH
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="Get test tUSD (development chains only)", request=None,
                   responses={201: Grant})
    def post(self, request):
        grant = faucet_claim(organization=_org(request), actor=request.user)
        return Response({"amount": exact(grant.amount), "address": grant.wallet.address,
                         "transaction": grant.transaction.tx_hash if grant.transaction else ""},
                        status=status.HTTP_201_CREATED)


class DisputeInput(serializers.Serializer):
    reason = serializers.CharField(max_length=MAX_REASON, trim_whitespace=True)


DISPUTE_FIELDS = {
    "id": serializers.IntegerField(), "job": serializers.IntegerField(), "status": serializers.CharField(),
    "reason": serializers.CharField(), "resolution": serializers.CharField(),
    "refund_amount": serializers.CharField(allow_null=True),
    "refund_transaction": serializers.CharField(allow_null=True),
    "created_at": serializers.DateTimeField(), "resolved_at": serializers.DateTimeField(allow_null=True)}
DisputeOut = inline_serializer("ConsumerDispute", DISPUTE_FIELDS)
DisputeList = inline_serializer("ConsumerDisputeList", DISPUTE_FIELDS, many=True)


def _dispute(d: ConsumerDispute) -> dict:
    return {"id": d.pk, "job": d.job_id, "status": d.status, "reason": d.reason, "resolution": d.resolution,
            "refund_amount": exact(d.refund_amount) or None, "refund_transaction": d.refund_tx or None,
            "created_at": d.created_at.isoformat(),
            "resolved_at": d.resolved_at.isoformat() if d.resolved_at else None}


class JobDisputesView(APIView):
    """GET/POST /api/v1/jobs/{id}/disputes/: the job's disputes; open one with a reason."""

    authentication_classes = AUTH
    permission_classes = [IsConsumer]

    def _job(self, request, pk: int):
        return get_object_or_404(jobs_for(request.user, JobAction.OWN), pk=pk)

    @extend_schema(summary="A job's disputes", responses={200: DisputeList})
    def get(self, request, pk: int):
        job = self._job(request, pk)
        return Response([_dispute(d) for d in ConsumerDispute.objects.filter(job=job)])

    @extend_schema(summary="Dispute a completed job", request=DisputeInput, responses={201: DisputeOut})
    def post(self, request, pk: int):
        job = self._job(request, pk)
        data = DisputeInput(data=request.data)
        data.is_valid(raise_exception=True)
        dispute = consumer_dispute_open(job=job, actor=request.user, reason=data.validated_data["reason"])
        return Response(_dispute(dispute), status=status.HTTP_201_CREATED)


# --- statements as files (the Account page's and the job page's downloads) ----------------
FORMATS = {"csv": "text/csv; charset=utf-8", "pdf": "application/pdf"}
FORMAT_PARAM = OpenApiParameter("fmt", {"type": "string", "enum": sorted(FORMATS)},
                                OpenApiParameter.PATH, description="csv or pdf")


def _file(body: bytes, fmt: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=FORMATS[fmt])
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class JobStatementFileView(APIView):
    """GET /api/v1/jobs/{id}/statement/{csv|pdf}/: the settled job's statement as a file."""

    authentication_classes = AUTH
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="A job's statement as CSV or PDF", parameters=[FORMAT_PARAM],
                   responses={(200, "text/csv"): OpenApiTypes.BINARY,
                              (200, "application/pdf"): OpenApiTypes.BINARY})
    def get(self, request, pk: int, fmt: str):
        org = _org(request)
        if fmt not in FORMATS:
            raise Http404("No such statement.")
        job = get_object_or_404(jobs_with_statement(org), pk=pk)
        body = (job_statement_csv if fmt == "csv" else job_statement_pdf)(org, job)
        return _file(body, fmt, f"computemesh-job-{job.pk}.{fmt}")


class MonthStatementFileView(APIView):
    """GET /api/v1/account/statements/{YYYY-MM}/{csv|pdf}/: a month of money movements."""

    authentication_classes = AUTH
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="A month's statement as CSV or PDF", parameters=[FORMAT_PARAM],
                   responses={(200, "text/csv"): OpenApiTypes.BINARY,
                              (200, "application/pdf"): OpenApiTypes.BINARY})
    def get(self, request, year: int, month: int, fmt: str):
        org = _org(request)
        if fmt not in FORMATS or not 1 <= month <= 12 or not 2000 <= year <= 9999:
            raise Http404("No such statement.")
        body = (month_statement_csv if fmt == "csv" else month_statement_pdf)(org, year, month)
        return _file(body, fmt, f"computemesh-{org.slug}-{year}-{month:02d}.{fmt}")
