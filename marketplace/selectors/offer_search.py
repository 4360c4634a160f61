"""The public offer search: one filter function over the Offer table's denormalized
columns, shared by the offers page (and usable by the API's filter set)."""

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db.models import F, Q, QuerySet

from .. import catalogue
from ..errors import MarketError
from ..models import Offer
from .market import offers_public


# The search's predicates, shared by this page search, the API's filter set and matching.
def free_at_least(gpus: int) -> Q:
    """At least `gpus` free GPUs (CPU slots), compared without an annotation so that the
    planner can still use the search indexes."""
    return Q(gpus_offered__gte=F("gpus_reserved") + gpus)


def in_regions(tokens) -> Q:
    """Region codes or blocs, expanded to an indexable `region IN (…)`."""
    return Q(region__in=catalogue.region_codes(tokens))


def verified_for(tags) -> Q:
    """Verified for every tag: the masks containing them, as an indexable `IN (…)`; and,
    when tags are asked for, a provider stake of at least MIN_STAKE_FOR_VERIFIED_TAGS (a
    verified claim is worth what the provider would lose for breaking it)."""
    q = Q(compliance_verified__in=catalogue.masks_with(catalogue.compliance_mask(list(tags))))
    if tags and settings.MIN_STAKE_FOR_VERIFIED_TAGS > 0:
        q &= Q(provider_stake__gte=settings.MIN_STAKE_FOR_VERIFIED_TAGS)
    return q


# Ordering keys (DRF OrderingFilter style) -> ORDER BY; every one ends in a unique column
# so that pages are stable.
ORDERINGS: dict[str, tuple] = {
    "price_per_gpu_hour": ("price_per_gpu_hour", "id"),
    "-price_per_gpu_hour": ("-price_per_gpu_hour", "-id"),
    "-gpu_memory_gb": (F("gpu_memory_gb").desc(nulls_last=True), "price_per_gpu_hour", "id"),
    "gpu_memory_gb": ("gpu_memory_gb", "price_per_gpu_hour", "id"),
    "-reliability": (F("reliability").desc(nulls_last=True), "price_per_gpu_hour", "id"),
    "reliability": (F("reliability").asc(nulls_first=True), "price_per_gpu_hour", "id"),
}
DEFAULT_ORDERING = "price_per_gpu_hour"


@dataclass(frozen=True)
class OfferQuery:
    gpu_models: tuple[str, ...] = ()  # any of these; empty: any model
    min_gpus: int | None = None
    min_gpu_memory_gb: int | None = None
    region: str = ""  # a code (EU-DE) or a bloc (EU)
    compliance: tuple[str, ...] = ()
    max_price: Decimal | None = None
    min_reliability: Decimal | None = None
    online: bool = False
    accepts_custom_code: bool = False  # only offers that run consumers' code bundles
    ordering: str = DEFAULT_ORDERING


def offer_search(query: OfferQuery, *, base: QuerySet[Offer] | None = None) -> QuerySet[Offer]:
    """Active offers matching `query`, ordered; raises MarketError naming a bad filter."""
    qs = offers_public() if base is None else base
    if query.gpu_models:
        qs = qs.filter(gpu_model__in=[catalogue.validate_gpu_model(m) for m in query.gpu_models])
    if query.min_gpus:
        if query.min_gpus < 1:
            raise MarketError("Minimum GPUs must be at least 1.", field="min_gpus")
        qs = qs.filter(free_at_least(query.min_gpus))
    if query.min_gpu_memory_gb:
        if query.min_gpu_memory_gb < 0:
            raise MarketError("Minimum GPU memory cannot be negative.",
                              field="min_gpu_memory_gb")
        qs = qs.filter(gpu_memory_gb__gte=query.min_gpu_memory_gb)
    if query.region:
        token = catalogue.validate_region_token(query.region, field="region")
        qs = qs.filter(in_regions([token]))
    if query.compliance:
        qs = qs.filter(verified_for(query.compliance))
    if query.max_price is not None:
        if query.max_price <= 0:
            raise MarketError("The maximum price must be more than 0 tUSD.", field="max_price")
        qs = qs.filter(price_per_gpu_hour__lte=query.max_price)
    if query.min_reliability is not None:
        if not 0 <= query.min_reliability <= 1:
            raise MarketError("Minimum reliability is a share between 0 and 1.",
                              field="min_reliability")
        if query.min_reliability > 0:
            qs = qs.filter(reliability__gte=query.min_reliability)
    if query.online:
        qs = qs.filter(node_online=True)
    if query.accepts_custom_code:
        qs = qs.filter(accepts_custom_code=True)
    ordering = ORDERINGS.get(query.ordering)
    if ordering is None:
        raise MarketError(f"Order by one of: {', '.join(ORDERINGS)}.", field="ordering")
    return qs.order_by(*ordering)
