"""The REST API of wallets: linking with a signature, the payout wallet and its delayed
change."""


from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from eth_utils import is_address, to_checksum_address
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from ..chain.client import chain_id
from ..errors import MarketError
from ..selectors.accounts import organization_of, require_provider
from ..selectors.payments import wallets_of
from ..services import wallets as wallet_services
from . import serializers as s
from .common import AUTH, ID, _errors

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
