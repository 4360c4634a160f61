"""The provider's Stake panel: stake from the custodial wallet, request a withdrawal,
withdraw after the delay, and the history the indexer has seen."""

import uuid

from django.contrib import messages
from django.shortcuts import redirect, render

from ..errors import MarketError
from ..forms import StakeForm, StakeWithdrawForm
from ..selectors.staking import stake_panel
from ..services import staking
from .common import org_required

ACTIONS = {"stake": staking.stake_deposit, "request_withdrawal": staking.stake_request_withdrawal}


@org_required("provider")
def stake_page(request):
    action = request.POST.get("action", "") if request.method == "POST" else ""
    forms = {name: StakeForm(request.POST if action == name else None, prefix=name,
                             initial={"request_id": uuid.uuid4()}) for name in ACTIONS}
    withdraw = StakeWithdrawForm(request.POST if action == "withdraw" else None, prefix="withdraw",
                                 initial={"request_id": uuid.uuid4()})
    status = 200
    if request.method == "POST":
        form = forms.get(action) or (withdraw if action == "withdraw" else None)
        if form is None:
            messages.error(request, "Choose stake, request withdrawal or withdraw.")
            return redirect("provider_stake")
        if form.is_valid():
            try:
                if action == "withdraw":
                    staking.stake_withdraw(organization=request.org, actor=request.user,
                                           request_id=form.cleaned_data["request_id"])
                else:
                    ACTIONS[action](organization=request.org, actor=request.user,
                                    amount=form.cleaned_data["amount"],
                                    request_id=form.cleaned_data["request_id"])
            except MarketError as exc:
                form.add_market_error(exc)
            else:
                messages.success(request, "Sent to the chain; the panel shows it once it is mined.")
                return redirect("provider_stake")
        status = 400
    return render(request, "provider/stake.html", {
        "panel": stake_panel(request.org), "stake_form": forms["stake"],
        "request_form": forms["request_withdrawal"], "withdraw_form": withdraw}, status=status)
