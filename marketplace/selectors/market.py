from django.db.models import QuerySet

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
