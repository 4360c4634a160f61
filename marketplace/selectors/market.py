from dataclasses import dataclass

from django.db.models import QuerySet, Sum

from ..models import Node, Offer
from .accounts import organization_of


def offers_public() -> QuerySet[Offer]:
    """What anyone may browse: active offers."""
    return Offer.objects.filter(status=Offer.Status.ACTIVE)


def offers_visible_to(user) -> QuerySet[Offer]:
    """Active offers, plus the caller's own paused ones."""
    org = organization_of(user)
    qs = Offer.objects.all()
    if org is not None and org.is_provider:
        return qs.filter(status=Offer.Status.ACTIVE) | qs.filter(provider=org)
    return qs.filter(status=Offer.Status.ACTIVE)


def offers_of_provider(user) -> QuerySet[Offer]:
    org = organization_of(user)
    if org is None or not org.is_provider:
        return Offer.objects.none()
    return Offer.objects.filter(provider=org)


def nodes_of_provider(user) -> QuerySet[Node]:
    org = organization_of(user)
    if org is None or not org.is_provider:
        return Node.objects.none()
    return Node.objects.filter(provider=org)


@dataclass(frozen=True)
class Capacity:
    """What a node can still list: its GPUs (slots on a CPU node), those its other offers
    list, what remains free for this offer, and what running jobs hold of this offer."""

    total: int
    listed_elsewhere: int
    reserved: int = 0
    online: bool = False

    @property
    def free(self) -> int:
        return max(self.total - self.listed_elsewhere, 0)


def node_capacity(node: Node, *, offer: Offer | None = None) -> Capacity:
    """`node`'s capacity for a new offer, or for `offer` being edited (its own GPUs count as
    free). The offer form shows it while the provider types; services/offers.py checks with it."""
    others = Offer.objects.filter(node=node)
    if offer is not None:
        others = others.exclude(pk=offer.pk)
    return Capacity(total=node.gpu_count, listed_elsewhere=others.aggregate(n=Sum("gpus_offered"))["n"] or 0,
                    reserved=offer.gpus_reserved if offer is not None else 0,
                    online=node.status == Node.Status.ONLINE)
