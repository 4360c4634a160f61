from dataclasses import replace

from django.contrib import messages
from django.db.models import Count, Sum
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from .. import catalogue
from ..errors import MarketError
from ..forms import NodeForm, OfferForm, utc_to_input
from ..models import Offer
from ..selectors.execution import provider_earnings
from ..selectors.market import node_capacity, nodes_of_provider, offers_of_provider
from ..selectors.payments import provider_payouts
from ..services.nodes import node_create, node_rotate_token
from ..services.offers import offer_create, offer_set_status, offer_update
from ..services.registration import CODE_TTL, registration_code_issue
from ..services.wallets import payout_address
from .common import org_required

AGENT_SERVER = "http://127.0.0.1:8000"


def _agent_page(request, node, token: str, *, rotated: bool):
    # Rendered straight from the POST, never stored: the token is shown this once.
    server = request.build_absolute_uri("/").rstrip("/") or AGENT_SERVER
    return render(request, "provider/node_token.html", {
        "node": node, "token": token, "rotated": rotated, "server": server,
    })


@org_required("provider")
def node_list(request):
    nodes = nodes_of_provider(request.user).annotate(
        offer_count=Count("offers"), gpus_listed=Sum("offers__gpus_offered"))
    return render(request, "provider/nodes.html", {"nodes": nodes,
                                                   "earnings": provider_earnings(request.org),
                                                   "payouts": provider_payouts(request.org),
                                                   "payout_address": payout_address(request.org)})


@org_required("provider")
def node_new(request):
    form = NodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            node, token = node_create(provider=request.org, spec=form.to_spec(),
                                      actor=request.user)
        except MarketError as exc:
            form.add_market_error(exc)
        else:
            return _agent_page(request, node, token, rotated=False)
    return render(request, "provider/node_form.html",
                  {"form": form, "regions": sorted(catalogue.REGIONS.items())})


@org_required("provider")
@require_POST
def node_register_code(request):
    """A one-time code and the command that registers a machine with it (shown once: only its
    hash is kept)."""
    try:
        code, row = registration_code_issue(provider=request.org, region=request.POST.get("region", ""),
                                            actor=request.user)
    except MarketError as exc:
        return HttpResponseBadRequest(exc.message)
    server = request.build_absolute_uri("/").rstrip("/") or AGENT_SERVER
    return render(request, "provider/node_register_code.html", {
        "code": code, "server": server, "expires_at": row.expires_at, "region": row.region,
        "minutes": int(CODE_TTL.total_seconds() // 60)})


@org_required("provider")
@require_POST
def node_rotate(request, pk: int):
    node = get_object_or_404(nodes_of_provider(request.user), pk=pk)
    token = node_rotate_token(node=node, actor=request.user)
    return _agent_page(request, node, token, rotated=True)


@org_required("provider")
def offer_mine(request):
    offers = offers_of_provider(request.user).select_related("node").order_by(
        "node__name", "price_per_gpu_hour", "id")
    return render(request, "provider/offers.html", {"offers": offers})


def _whole(value) -> int | None:
    value = str(value or "").strip()
    return int(value) if value.isdigit() and len(value) < 10 else None


def _capacity(node, offer, wanted) -> dict:
    """The offer form's capacity panel: the machine's free GPUs for this offer."""
    return {"cap_node": node, "capacity": node_capacity(node, offer=offer) if node is not None else None,
            "wanted": _whole(wanted), "offer": offer}


@org_required("provider")
@require_GET
def offer_capacity(request):
    """The offer form's capacity panel alone (htmx), while the provider edits: the chosen
    machine (`node`), or the edited offer's (`offer`), with the GPUs asked for."""
    offer = None
    if _whole(request.GET.get("offer")) is not None:
        offer = get_object_or_404(offers_of_provider(request.user).select_related("node"),
                                  pk=_whole(request.GET.get("offer")))
        node = offer.node
    else:
        node = nodes_of_provider(request.user).filter(pk=_whole(request.GET.get("node"))).first()
    return render(request, "provider/_offer_capacity.html",
                  _capacity(node, offer, request.GET.get("gpus_offered")))


@org_required("provider")
def offer_new(request):
    nodes = nodes_of_provider(request.user)
    initial = {"node": request.GET.get("node")} if request.GET.get("node") else {}
    form = OfferForm(request.POST or None, nodes=nodes, initial=initial)
    chosen = nodes.filter(pk=_whole(form["node"].value())).first()
    if request.method == "POST" and form.is_valid():
        try:
            offer_create(provider=request.org, node=form.cleaned_data["node"],
                         spec=form.to_spec())
        except MarketError as exc:
            form.add_market_error(exc)
        else:
            messages.success(request, "Offer listed. Consumers can find it while its machine "
                                      "is online.")
            return redirect("provider_offers")
    return render(request, "provider/offer_form.html", {
        "form": form, "has_nodes": nodes.exists(),
        **_capacity(chosen, None, form["gpus_offered"].value())})


@org_required("provider")
def offer_edit(request, pk: int):
    offer = get_object_or_404(offers_of_provider(request.user).select_related("node"), pk=pk)
    initial = {
        "gpus_offered": offer.gpus_offered, "price_per_gpu_hour": offer.price_per_gpu_hour,
        "min_duration_hours": offer.min_duration_hours,
        "max_duration_hours": offer.max_duration_hours,
        "accepts_custom_code": offer.accepts_custom_code,
    }
    if offer.available_until is not None:
        initial["available_until"] = utc_to_input(offer.available_until)
    form = OfferForm(request.POST or None, initial=initial, editing=True, offer=offer)
    if offer.available_until is not None and not form.is_bound:
        form.fields["available_until"].widget.attrs["data-utc-default"] = (
            offer.available_until.isoformat())
    if request.method == "POST" and form.is_valid():
        spec = form.to_spec()
        if spec.available_from is None:
            # Keep the listed start unless the provider sets a new one.
            spec = replace(spec, available_from=offer.available_from)
        try:
            offer_update(provider=request.org, offer=offer, spec=spec)
        except MarketError as exc:
            form.add_market_error(exc)
        else:
            messages.success(request, "Offer updated.")
            return redirect("provider_offers")
    return render(request, "provider/offer_form.html", {
        "form": form, "has_nodes": True, **_capacity(offer.node, offer, form["gpus_offered"].value())})


@org_required("provider")
@require_POST
def offer_status(request, pk: int):
    offer = get_object_or_404(offers_of_provider(request.user).select_related("node"), pk=pk)
    status = request.POST.get("status", "")
    try:
        offer_set_status(provider=request.org, offer=offer, status=status)
    except MarketError as exc:
        messages.error(request, exc.message)
    else:
        word = "resumed" if status == Offer.Status.ACTIVE else "paused"
        messages.success(request, f"Offer on {offer.node.name} {word}.")
    return redirect("provider_offers")
