"""The wallets page: an organization's wallets, linking one from the browser (Sign-In with
Ethereum through the wallet's EIP-1193 provider; static/js/wallet.js) and, for providers,
choosing the payout wallet."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from ..errors import PermissionDenied
from ..selectors.accounts import organization_of, require_provider
from ..selectors.payments import wallets_of
from ..services.wallets import wallet_set_payout


@login_required
def wallet_list(request):
    org = organization_of(request.user)
    if org is None:
        return render(request, "403.html", {"message": "Join or create an organization to link a wallet.",
                                            "kind": "member"}, status=403)
    return render(request, "wallets/list.html", {"wallets": wallets_of(request.user), "org": org})


@login_required
@require_POST
def wallet_payout(request, pk: int):
    try:
        require_provider(request.user)
    except PermissionDenied as exc:
        return render(request, "403.html", {"message": exc.message, "kind": "provider"}, status=403)
    wallet = get_object_or_404(wallets_of(request.user), pk=pk)
    wallet_set_payout(wallet=wallet)
    messages.success(request, f"Payouts now go to {wallet.address}.")
    return redirect("wallets")
