from ..errors import PermissionDenied
from ..models import Membership, Organization


def organization_of(user) -> Organization | None:
    if user is None or not user.is_authenticated:
        return None
    member = getattr(user, "membership", None)
    return member.organization if member is not None else None


def require_provider(user) -> Organization:
    org = organization_of(user)
    if org is None or not org.is_provider:
        raise PermissionDenied("Only members of a provider organization can do that.")
    if org.is_suspended:
        raise PermissionDenied("Your organization is suspended; contact support.")
    return org


def require_consumer(user) -> Organization:
    org = organization_of(user)
    if org is None or not org.is_consumer:
        raise PermissionDenied("Only members of a consumer organization can do that.")
    if org.is_suspended:
        raise PermissionDenied("Your organization is suspended; contact support.")
    return org


def membership_of(user) -> Membership | None:
    """The caller's membership with its organization (one query), or None."""
    if user is None or not user.is_authenticated:
        return None
    return Membership.objects.select_related("organization").filter(user=user).first()
