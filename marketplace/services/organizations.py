"""Staff changes to organizations and their members (the admin), each written to the audit
trail against the organization: creating, renaming, verifying, adding, re-roling and
removing members. Signing up (services/accounts.py) and suspending (services/suspension.py)
have their own services."""

from django.db import transaction

from ..errors import MarketError
from ..models import Dataset, Job, Membership, Node, Organization
from .accounts import organization_create
from .audit import audit_record
from .suspension import organization_suspend

EDITABLE = ("name", "kind", "sector")


def organization_add(*, name: str, kind: str, sector: str, actor, verified: bool = False,
                     suspended: bool = False) -> Organization:
    with transaction.atomic():
        org = organization_create(name=name, kind=kind, sector=sector)
        audit_record(actor=actor, action="organization.create", obj=org,
                     message=f"Created {org.name} ({org.get_kind_display()})",
                     data={"kind": org.kind, "sector": org.sector})
        if verified:
            org = organization_set_verified(organization=org, verified=True, actor=actor)
    if suspended:  # after commit of the creation: suspending signals the channel layer
        reason = f"suspended by {getattr(actor, 'username', 'staff')} when created in the admin"
        org = organization_suspend(organization=org, actor=actor, reason=reason)
    return org


def _kind_change_refused(org: Organization, kind: str) -> str | None:
    if kind == org.kind:
        return None
    # Its nodes, offers, jobs and datasets were made for the kind it has.
    used = (Node.objects.filter(provider=org).exists() or Job.objects.filter(owner=org).exists()
            or Dataset.objects.filter(owner=org).exists())
    if used:
        return (f"{org.name} has nodes, jobs or datasets; it stays a "
                f"{org.get_kind_display().lower()}.")
    return None


def organization_changes_validate(*, organization: Organization, name: str, kind: str,
                                  sector: str) -> None:
    """What organization_update refuses, for forms that show it beside the field."""
    name = (name or "").strip()
    if not name:
        raise MarketError("Give the organization a name.", field="name")
    if len(name) > 120:
        raise MarketError("Organization names are at most 120 characters.", field="name")
    if Organization.objects.filter(name__iexact=name).exclude(pk=organization.pk).exists():
        raise MarketError("Another organization has this name.", field="name")
    if kind not in Organization.Kind.values:
        raise MarketError("Choose consumer or provider.", field="kind")
    if sector not in Organization.Sector.values:
        raise MarketError("Choose a sector: healthcare, energy, research or other.", field="sector")
    refused = _kind_change_refused(organization, kind)
    if refused:
        raise MarketError(refused, field="kind")


def organization_update(*, organization: Organization, actor, name: str, kind: str,
                        sector: str) -> Organization:
    """Rename, re-sector or (while it has nothing that depends on it) re-kind an
    organization; audited with the fields that changed, nothing when none did."""
    organization_changes_validate(organization=organization, name=name, kind=kind, sector=sector)
    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=organization.pk)
        wanted = {"name": name.strip(), "kind": kind, "sector": sector}
        changes = {f: [getattr(org, f), v] for f, v in wanted.items() if getattr(org, f) != v}
        if not changes:
            return org
        for field, (_, value) in changes.items():
            setattr(org, field, value)
        org.save(update_fields=list(changes))
        audit_record(actor=actor, action="organization.update", obj=org,
                     message=f"Changed {org.name}: " + ", ".join(
                         f"{f} {old!r} → {new!r}" for f, (old, new) in changes.items()),
                     data={"changes": changes})
    return org


def organization_set_verified(*, organization: Organization, verified: bool, actor) -> Organization:
    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=organization.pk)
        if org.is_verified == verified:
            return org
        org.is_verified = verified
        org.save(update_fields=["is_verified"])
        verb = "Verified" if verified else "Withdrew the verification of"
        audit_record(actor=actor, action="organization.verify" if verified else "organization.unverify",
                     obj=org, message=f"{verb} {org.name}")
    return org


def _role(role: str) -> str:
    if role not in Membership.Role.values:
        raise MarketError("Choose owner, admin or member.", field="role")
    return role


def membership_add(*, organization: Organization, user, role: str, actor) -> Membership:
    role = _role(role)
    with transaction.atomic():
        if Membership.objects.filter(user=user).exists():
            raise MarketError(f"{user.get_username()} already belongs to an organization.", field="user")
        membership = Membership.objects.create(user=user, organization=organization, role=role)
        audit_record(actor=actor, action="organization.member_add", obj=organization,
                     message=f"Added {user.get_username()} to {organization.name} as {role}",
                     data={"user": user.get_username(), "role": role})
    return membership


def membership_set_role(*, membership: Membership, role: str, actor) -> Membership:
    role = _role(role)
    with transaction.atomic():
        row = (Membership.objects.select_for_update(of=("self",)).select_related("user", "organization")
               .get(pk=membership.pk))
        if row.role == role:
            return row
        old, row.role = row.role, role
        row.save(update_fields=["role"])
        who = row.user.get_username()
        audit_record(actor=actor, action="organization.member_role", obj=row.organization,
                     message=f"{who} in {row.organization.name}: {old} → {role}",
                     data={"user": who, "role": [old, role]})
    return row


def membership_remove(*, membership: Membership, actor) -> None:
    with transaction.atomic():
        row = (Membership.objects.select_for_update(of=("self",)).select_related("user", "organization")
               .filter(pk=membership.pk).first())
        if row is None:  # removed meanwhile
            return
        who = row.user.get_username()
        row.delete()
        audit_record(actor=actor, action="organization.member_remove", obj=row.organization,
                     message=f"Removed {who} ({row.role}) from {row.organization.name}",
                     data={"user": who, "role": row.role})
