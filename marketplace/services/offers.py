from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from ..errors import Conflict, MarketError, PermissionDenied, invalid_all
from ..models import Node, Offer, Organization
from ..money import is_whole_micro
from ..selectors.market import node_capacity
from . import enqueue, live
from .claims import node_offers_recheck, offer_resume_check
from .staking import provider_stake_total

MAX_PRICE = Decimal("10000")


@dataclass(frozen=True)
class OfferSpec:
    gpus_offered: int
    price_per_gpu_hour: Decimal
    available_from: datetime | None = None
    available_until: datetime | None = None
    min_duration_hours: Decimal = Decimal("0.25")
    max_duration_hours: Decimal | None = None
    # Run consumers' own code (code bundles) in the agent's sandbox: the provider opts in.
    accepts_custom_code: bool = False


def offer_problems(spec: OfferSpec, node: Node | None, *,
                   exclude_offer: Offer | None = None) -> list[tuple[str | None, str]]:
    """Every problem of an offer's terms, as (field, message), none when they are fine. The
    offer form asks this of what it parsed (a value it could not parse is None here, and
    keeps the form's own error), so that all errors show after one submission; `node=None`
    skips the capacity check."""
    problems: list[tuple[str | None, str]] = []
    price = spec.price_per_gpu_hour
    if price is None or price <= 0:
        problems.append(("price_per_gpu_hour", "The price per GPU-hour must be more than 0 tUSD."))
    elif price > MAX_PRICE:
        problems.append(("price_per_gpu_hour", f"The price per GPU-hour must be at most {MAX_PRICE} tUSD."))
    elif not is_whole_micro(price):
        problems.append(("price_per_gpu_hour", "Prices have at most 6 decimal places."))
    if spec.gpus_offered is None or spec.gpus_offered < 1:
        problems.append(("gpus_offered", "Offer at least 1 GPU."))
    elif node is not None:
        capacity = node_capacity(node, offer=exclude_offer)
        if spec.gpus_offered > capacity.free:
            problems.append(("gpus_offered", f"{node.name} has {capacity.total} GPUs and "
                                             f"{capacity.listed_elsewhere} are listed in other offers; "
                                             f"you can offer at most {capacity.free}."))
        elif spec.gpus_offered < capacity.reserved:
            problems.append(("gpus_offered", f"{capacity.reserved} GPUs of this offer are reserved by "
                                             "running jobs; you cannot offer fewer."))
    start = spec.available_from or timezone.now()
    if spec.available_until is not None and spec.available_until <= start:
        problems.append(("available_until", "The availability window must end after it starts."))
    elif spec.available_until is not None and spec.available_until <= timezone.now():
        problems.append(("available_until", "The availability window has already ended."))
    min_h = spec.min_duration_hours
    if min_h is None or min_h <= 0:
        problems.append(("min_duration_hours", "The minimum duration must be more than 0 hours."))
    elif spec.max_duration_hours is not None and spec.max_duration_hours < min_h:
        problems.append(("max_duration_hours", "The maximum duration cannot be shorter than the minimum."))
    return problems


def _validate(spec: OfferSpec, node: Node, *, exclude_offer: Offer | None = None) -> dict:
    """The offer's fields, or a MarketError with every problem found (each on its field)."""
    invalid_all(offer_problems(spec, node, exclude_offer=exclude_offer))
    start = spec.available_from or timezone.now()
    price, min_h = spec.price_per_gpu_hour, spec.min_duration_hours
    return {
        "gpus_offered": spec.gpus_offered, "price_per_gpu_hour": price,
        "available_from": start, "available_until": spec.available_until,
        "min_duration_hours": min_h, "max_duration_hours": spec.max_duration_hours,
        "accepts_custom_code": bool(spec.accepts_custom_code),
    }


def _node_fields(node: Node) -> dict:
    return {
        "provider_id": node.provider_id, "gpu_model": node.gpu_model,
        "gpu_memory_gb": node.gpu_memory_gb, "region": node.region,
        "compliance_verified": node.compliance_verified, "reliability": node.reliability,
        "node_online": node.status == Node.Status.ONLINE,
        "provider_stake": provider_stake_total(node.provider_id),
    }


def _check_owner(provider: Organization, node: Node) -> None:
    if node.provider_id != provider.pk:
        raise PermissionDenied("That node belongs to another provider.")
    if node.provider.is_suspended:
        raise PermissionDenied("The organization is suspended; its offers cannot change.")
    if node.status == Node.Status.SUSPENDED:
        raise PermissionDenied("That node is suspended; its offers cannot change.")


def offer_create(*, provider: Organization, node: Node, spec: OfferSpec) -> Offer:
    _check_owner(provider, node)
    with transaction.atomic():
        # Lock the node so that two concurrent offers cannot list more GPUs than it has.
        node = Node.objects.select_for_update().get(pk=node.pk)
        fields = _validate(spec, node)
        offer = Offer.objects.create(node=node, **fields, **_node_fields(node))
        node_offers_recheck(node=node, when="when the offer was listed")
        offer.refresh_from_db()
        enqueue.rematch_soon()
        return offer


def offer_update(*, provider: Organization, offer: Offer, spec: OfferSpec) -> Offer:
    _check_owner(provider, offer.node)
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=offer.node_id)
        offer = Offer.objects.select_for_update().get(pk=offer.pk)
        fields = _validate(spec, node, exclude_offer=offer)
        for key, value in fields.items():
            setattr(offer, key, value)
        offer.save()
        node_offers_recheck(node=node, when="when the offer was changed")
        offer.refresh_from_db()
        enqueue.rematch_soon()
    return offer


def offer_set_status(*, provider: Organization | None, offer: Offer, status: str) -> Offer:
    """Pause or resume a listing. `provider=None` is an admin acting on any offer."""
    if status not in Offer.Status.values:
        raise MarketError("Status must be active or paused.", field="status")
    if provider is not None:
        _check_owner(provider, offer.node)
    elif status == Offer.Status.ACTIVE and offer.node.status == Node.Status.SUSPENDED:
        raise Conflict("The node is suspended; lift the suspension first.")
    elif status == Offer.Status.ACTIVE and offer.node.provider.is_suspended:
        raise Conflict("The organization is suspended; lift its suspension first.")
    if status == Offer.Status.ACTIVE and (why := offer_resume_check(offer)):
        # Taken off the market because the node reported less than it lists (services/claims.py).
        raise Conflict(f"This offer cannot go back on the market: {why}. List what the node has, "
                       "or reconnect its agent on the machine the offer describes.", code="claims_mismatch")
    Offer.objects.filter(pk=offer.pk).update(status=status, status_reason="", updated_at=timezone.now())
    offer.status, offer.status_reason = status, ""
    live.offers_changed([offer.pk])
    if status == Offer.Status.ACTIVE:
        enqueue.rematch_soon()
    return offer


def offer_spec_validate(*, spec: OfferSpec, node: Node, offer: Offer | None = None) -> None:
    """Raise MarketError naming the field when offer_create/offer_update would refuse `spec`
    on the node's own provider's behalf; forms call it before writing."""
    _check_owner(node.provider, node)
    _validate(spec, node, exclude_offer=offer)
    if offer is not None and spec.gpus_offered < offer.gpus_reserved:
        raise MarketError(f"{offer.gpus_reserved} GPUs of this offer are reserved by running "
                          "jobs; you cannot offer fewer.", field="gpus_offered")
