import secrets
from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from ..errors import MarketError, PermissionDenied
from ..models import Membership, Organization
from ..text import clean_name
from .faucet import custodial_wallet_for_new_organization

if TYPE_CHECKING:  # the project's user model is Django's own (no AUTH_USER_MODEL)
    from django.contrib.auth.models import User
else:
    User = get_user_model()


def _new_join_code() -> str:
    return secrets.token_urlsafe(12)


def organization_create(*, name: str, kind: str, sector: str = Organization.Sector.OTHER,
                        owner=None) -> Organization:
    name = clean_name(name)
    if not name:
        raise MarketError("Give your organization a name.", field="organization_name")
    if len(name) > 120:
        raise MarketError("Organization names are at most 120 characters.",
                          field="organization_name")
    if kind not in Organization.Kind.values:
        raise MarketError("Choose consumer or provider.", field="kind")
    if sector not in Organization.Sector.values:
        raise MarketError("Choose a sector: healthcare, energy, research or other.",
                          field="sector")
    if Organization.objects.filter(name__iexact=name).exists():
        raise MarketError("An organization with this name exists; ask a colleague for its "
                          "join code.", field="organization_name")
    base = slugify(name)[:120] or "org"
    slug, n = base, 1
    while Organization.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    with transaction.atomic():
        org = Organization.objects.create(name=name, slug=slug, kind=kind, sector=sector,
                                          join_code=_new_join_code())
        if owner is not None:
            Membership.objects.create(user=owner, organization=org, role=Membership.Role.OWNER)
    custodial_wallet_for_new_organization(organization=org)
    return org


def user_signup(*, username: str, email: str, password: str, organization_name: str = "",
                kind: str = "", sector: str = Organization.Sector.OTHER,
                join_code: str = "") -> User:
    """Create a user and either a new organization (they own it) or join one by its code."""
    username = (username or "").strip()
    if not username or len(username) > 150:
        raise MarketError("Choose a username of 1 to 150 characters.", field="username")
    if User.objects.filter(username__iexact=username).exists():
        raise MarketError("That username is taken.", field="username")
    candidate = User(username=username, email=email)
    try:
        validate_password(password, user=candidate)
    except ValidationError as exc:
        raise MarketError(" ".join(exc.messages), field="password") from None
    org = None
    if join_code:
        org = Organization.objects.filter(join_code=join_code.strip()).first()
        if org is None:
            raise MarketError("No organization has that join code.", field="join_code")
    elif not organization_name:
        raise MarketError("Name a new organization or enter a join code.",
                          field="organization_name")
    try:
        with transaction.atomic():
            user = User.objects.create_user(username=username, email=email, password=password)
            if org is None:
                organization_create(name=organization_name, kind=kind, sector=sector,
                                    owner=user)
            else:
                Membership.objects.create(user=user, organization=org,
                                          role=Membership.Role.MEMBER)
    except IntegrityError:
        raise MarketError("That username is taken.", field="username") from None
    return user


def organization_rotate_join_code(*, organization: Organization, actor) -> str:
    member = getattr(actor, "membership", None)
    if member is None or member.organization_id != organization.pk or member.role not in (
        Membership.Role.OWNER, Membership.Role.ADMIN
    ):
        raise PermissionDenied("Only an owner or admin of the organization can do that.")
    organization.join_code = _new_join_code()
    organization.save(update_fields=["join_code"])
    return organization.join_code
