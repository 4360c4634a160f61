from django.core.paginator import Paginator
from django.db.models import Count, DecimalField, ExpressionWrapper, F, Min, Q
from django.shortcuts import get_object_or_404, render
from django.utils.cache import patch_vary_headers

from .. import catalogue
from ..errors import MarketError
from ..forms import OfferFilterForm
from ..selectors.accounts import organization_of
from ..selectors.market import offers_public, offers_visible_to
from ..selectors.offer_search import offer_search
from .common import is_htmx

PAGE_SIZE = 20


def home(request):
    stats = offers_public().aggregate(
        offers=Count("id"), online=Count("id", filter=Q(node_online=True)),
        cheapest=Min("price_per_gpu_hour", filter=~Q(gpu_model=catalogue.CPU)),
        providers=Count("provider", distinct=True))
    return render(request, "market/home.html", {
        "stats": stats, "templates": catalogue.templates().values(),
    })


def offer_list(request):
    # Every filter is optional, so an empty query string is a valid (bound) form.
    form = OfferFilterForm(request.GET)
    page = None
    if form.is_valid():
        try:
            # The machine's CPU, RAM, disk and network come from its node: a join on the
            # page's 20 rows, after the search has used its covering index.
            qs = offer_search(form.to_query()).select_related("provider", "node").annotate(
                total_per_hour=ExpressionWrapper(
                    F("price_per_gpu_hour") * F("gpus_offered"),
                    output_field=DecimalField(max_digits=26, decimal_places=6)))
            page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
        except MarketError as exc:
            form.add_market_error(exc)
    params = request.GET.copy()
    params.pop("page", None)
    context = {"form": form, "page": page, "querystring": params.urlencode(),
               "errors": form.error_list()}
    template = "market/_offer_results.html" if is_htmx(request) else "market/offers.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


def offer_detail(request, pk: int):
    offer = get_object_or_404(
        offers_visible_to(request.user).select_related("node", "provider"), pk=pk)
    node = offer.node
    org = organization_of(request.user)
    return render(request, "market/offer_detail.html", {
        "offer": offer, "node": node, "total_per_hour": offer.price_per_gpu_hour * offer.gpus_offered,
        "claimed_only": [t for t in node.claimed_tags if t not in offer.compliance_tags],
        "is_mine": org is not None and offer.provider_id == org.pk,
    })
