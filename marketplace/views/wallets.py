"""The wallets page: an organization's wallets, linking one from the browser (Sign-In with
Ethereum through the wallet's EIP-1193 provider; static/js/wallet.js) and, for providers,
choosing the payout wallet (organization admins only; it takes effect after
PAYOUT_CHANGE_DELAY_S, announced meanwhile on every page: templates/_payout_banner.html)."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from ..errors import PermissionDenied
from ..selectors.accounts import organization_of, require_provider
from ..selectors.payments import wallets_of
from ..services.wallets import is_org_admin, payout_address, payout_changes_apply, wallet_set_payout


@login_required
def wallet_list(request):
    org = organization_of(request.user)
    if org is None:
        return render(request, "403.html", {"message": "Join or create an organization to link a wallet.",
                                            "kind": "member"}, status=403)
    payout_changes_apply(organization=org)  # a change whose delay is over shows as made
    return render(request, "wallets/list.html", {
        "wallets": wallets_of(request.user), "org": org,
        "payout_address": payout_address(org) if org.is_provider else None,
        "can_change_payout": is_org_admin(request.user, org),
        "payout_delay_h": round(settings.PAYOUT_CHANGE_DELAY_S / 3600, 1)})


@login_required
@require_POST
def wallet_payout(request, pk: int):
    try:
        require_provider(request.user)
    except PermissionDenied as exc:
        return render(request, "403.html", {"message": exc.message, "kind": "provider"}, status=403)
    wallet = get_object_or_404(wallets_of(request.user), pk=pk)
    try:
        change = wallet_set_payout(wallet=wallet, actor=request.user)
    except PermissionDenied as exc:
        return render(request, "403.html", {"message": exc.message,
                                            "heading": "Only admins change the payout wallet"}, status=403)
    if change is not None:
        messages.success(request, f"Payouts go to {wallet.address} from {change.effective_at:%Y-%m-%d %H:%M} "
                                  "UTC; until then, to the current payout wallet.")
    else:
        messages.success(request, f"Payouts go to {wallet.address}.")
    return redirect("wallets")
