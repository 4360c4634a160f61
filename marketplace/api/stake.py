"""The provider's stake over the API: read it, stake, request a withdrawal, withdraw.
Every call acts on the caller's own organization (no ids in the URL); `request_id` (a
UUID, optional) makes a retried POST send nothing new."""

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.decorators import action
from rest_framework.response import Response

from ..models import StakeOperation
from ..selectors.accounts import require_provider
from ..selectors.staking import stake_api
from ..services import staking
from .permissions import IsProvider


class StakeInput(serializers.Serializer):
    amount = serializers.DecimalField(max_digits=20, decimal_places=6, min_value=0)
    request_id = serializers.UUIDField(required=False)


class WithdrawInput(serializers.Serializer):
    request_id = serializers.UUIDField(required=False)


Operation = inline_serializer("StakeOperation", {
    "request_id": serializers.UUIDField(), "kind": serializers.CharField(),
    "amount": serializers.CharField(allow_null=True), "address": serializers.CharField(),
    "tx_hash": serializers.CharField(), "tx_status": serializers.CharField()})


def _operation(op) -> dict:
    return {"request_id": str(op.request_id), "kind": op.kind,
            "amount": str(op.amount) if op.amount is not None else None, "address": op.address,
            "tx_hash": op.transaction.tx_hash, "tx_status": op.transaction.status}


Summary = inline_serializer("StakeSummary", {
    "staked": serializers.CharField(), "pending": serializers.CharField(),
    "slashed": serializers.CharField(), "unlock_at": serializers.DateTimeField(allow_null=True),
    "withdraw_delay_s": serializers.IntegerField(),
    "min_stake_for_verified_tags": serializers.CharField(),
    "addresses": serializers.ListField(child=serializers.DictField()),
    "history": serializers.ListField(child=serializers.DictField())})


class _OneObjectSchema(AutoSchema):
    """`list` here answers one summary object, not an array of them."""

    def _is_list_view(self, serializer=None) -> bool:
        return False


class StakeViewSet(viewsets.GenericViewSet):
    schema = _OneObjectSchema()
    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [IsProvider]
    serializer_class = StakeInput
    pagination_class = None
    queryset = StakeOperation.objects.none()  # for the schema: every call reads the caller's own stake

    @extend_schema(summary="Your organization's stake, per address, and its history",
                   responses={200: Summary})
    def list(self, request):
        return Response(stake_api(require_provider(request.user)))

    def _run(self, request, service, serializer_class):
        body = serializer_class(data=request.data)
        body.is_valid(raise_exception=True)
        op = service(organization=require_provider(request.user), actor=request.user, **body.validated_data)
        return Response(_operation(op), status=status.HTTP_202_ACCEPTED)

    @extend_schema(summary="Stake tUSD from your custodial wallet", request=StakeInput,
                   responses={202: Operation})
    @action(detail=False, methods=["post"])
    def deposit(self, request):
        return self._run(request, staking.stake_deposit, StakeInput)

    @extend_schema(summary="Move stake to pending withdrawal (withdraw it after the delay)",
                   request=StakeInput, responses={202: Operation})
    @action(detail=False, methods=["post"], url_path="request-withdrawal")
    def request_withdrawal(self, request):
        return self._run(request, staking.stake_request_withdrawal, StakeInput)

    @extend_schema(summary="Withdraw the pending stake once it has unlocked", request=WithdrawInput,
                   responses={202: Operation})
    @action(detail=False, methods=["post"])
    def withdraw(self, request):
        return self._run(request, staking.stake_withdraw, WithdrawInput)
