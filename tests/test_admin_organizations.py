"""Organization changes made in the admin go through services that write audit events:
creating, renaming, verifying and suspending an organization, adding, re-roling and removing
its members, and deleting a dataset. Bad input is a form error, never a 500."""

import pytest
from django.contrib.messages import get_messages
from django.core.files.base import ContentFile
from django.urls import reverse

from marketplace.models import AuditEvent, Dataset, Job, Membership, Organization

from .factories import JobFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def _audits(action: str, org: Organization | None = None):
    events = AuditEvent.objects.filter(action=action)
    if org is not None:
        events = events.filter(object_type="organization", object_id=str(org.pk))
    return events


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _change_org(client, org: Organization, memberships=(), extra=(), **fields):
    """POST the organization's change form: its fields and the membership inline's rows
    (existing ones first, as the page lists them, then `extra` new ones)."""
    data = {"name": org.name, "kind": org.kind, "sector": org.sector,
            "is_verified": "on" if org.is_verified else ""}
    data.update(fields)
    rows = list(memberships) + list(extra)
    data.update({"memberships-TOTAL_FORMS": str(len(rows)),
                 "memberships-INITIAL_FORMS": str(len(memberships)),
                 "memberships-MIN_NUM_FORMS": "0", "memberships-MAX_NUM_FORMS": "1000"})
    for i, row in enumerate(rows):
        for key, value in row.items():
            data[f"memberships-{i}-{key}"] = value
        data[f"memberships-{i}-organization"] = str(org.pk)
    data = {k: v for k, v in data.items() if v != ""}
    return client.post(reverse("admin:marketplace_organization_change", args=[org.pk]), data)


def _row(membership: Membership, **changes) -> dict:
    return {"id": str(membership.pk), "user": str(membership.user_id), "role": membership.role,
            **changes}


# --- Organizations -------------------------------------------------------------------
def test_adding_a_verified_organization_audits_its_creation_and_verification(staff, admin_user):
    response = staff.post(reverse("admin:marketplace_organization_add"),
                          {"name": "Helio Grid", "kind": "provider", "sector": "energy",
                           "is_verified": "on"})
    assert response.status_code == 302
    org = Organization.objects.get(name="Helio Grid")
    assert org.is_verified and not org.is_suspended
    assert _audits("organization.create", org).get().actor == admin_user
    assert _audits("organization.verify", org).get().actor == admin_user


def test_adding_a_suspended_organization_suspends_it_through_the_service(staff, admin_user):
    staff.post(reverse("admin:marketplace_organization_add"),
               {"name": "Shady Compute", "kind": "provider", "sector": "other", "is_suspended": "on"})
    org = Organization.objects.get(name="Shady Compute")
    assert org.is_suspended
    assert _audits("organization.suspend", org).get().actor == admin_user


def test_changing_an_organization_audits_what_changed(staff, healthcare, admin_user):
    response = _change_org(staff, healthcare, name="Medisight Labs", sector="research", is_verified="on")
    assert response.status_code == 302, response.context["adminform"].form.errors
    healthcare.refresh_from_db()
    assert (healthcare.name, healthcare.sector, healthcare.is_verified) == (
        "Medisight Labs", "research", True)
    update = _audits("organization.update", healthcare).get()
    assert update.actor == admin_user
    assert update.data["changes"] == {"name": ["Medisight", "Medisight Labs"],
                                      "sector": ["healthcare", "research"]}
    assert _audits("organization.verify", healthcare).count() == 1
    _change_org(staff, healthcare, is_verified="")
    healthcare.refresh_from_db()
    assert not healthcare.is_verified
    assert _audits("organization.unverify", healthcare).count() == 1


def test_saving_an_unchanged_organization_audits_nothing(staff, healthcare):
    assert _change_org(staff, healthcare).status_code == 302
    assert not AuditEvent.objects.exists()


def test_a_name_taken_by_another_organization_is_a_form_error(staff, healthcare, energy):
    response = _change_org(staff, healthcare, name="gridcast")
    assert response.status_code == 200
    assert "name" in response.context["adminform"].form.errors
    healthcare.refresh_from_db()
    assert healthcare.name == "Medisight" and not AuditEvent.objects.exists()


def test_a_provider_with_nodes_cannot_become_a_consumer(staff, provider_org, carol_node):
    response = _change_org(staff, provider_org, kind="consumer")
    assert response.status_code == 200
    assert "kind" in response.context["adminform"].form.errors
    provider_org.refresh_from_db()
    assert provider_org.kind == Organization.Kind.PROVIDER


def test_organizations_are_not_deleted_in_the_admin(staff, healthcare):
    # They carry history (jobs, nodes, payments, the audit trail): suspend instead.
    delete = staff.get(reverse("admin:marketplace_organization_delete", args=[healthcare.pk]))
    assert delete.status_code == 403
    assert Organization.objects.filter(pk=healthcare.pk).exists()


# --- Memberships, from the organization's page and from their own ----------------------
def test_the_membership_inline_adds_re_roles_and_removes_members_with_audits(
        staff, healthcare, alice, admin_user):
    newcomer = UserFactory(username="nadia")
    alice_row = Membership.objects.get(user=alice)
    response = _change_org(staff, healthcare, memberships=[_row(alice_row)],
                           extra=[{"user": str(newcomer.pk), "role": "member"}])
    assert response.status_code == 302, response.context["inline_admin_formsets"]
    assert Membership.objects.get(user=newcomer).organization == healthcare
    added = _audits("organization.member_add", healthcare).get()
    assert added.actor == admin_user and added.data == {"user": "nadia", "role": "member"}

    nadia_row = Membership.objects.get(user=newcomer)
    _change_org(staff, healthcare, memberships=[_row(alice_row), _row(nadia_row, role="admin")])
    assert Membership.objects.get(user=newcomer).role == Membership.Role.ADMIN
    assert _audits("organization.member_role", healthcare).get().data == {
        "user": "nadia", "role": ["member", "admin"]}

    _change_org(staff, healthcare, memberships=[_row(alice_row), _row(nadia_row, role="admin", DELETE="on")])
    assert not Membership.objects.filter(user=newcomer).exists()
    assert _audits("organization.member_remove", healthcare).get().data == {"user": "nadia", "role": "admin"}


def test_a_user_of_another_organization_cannot_be_added_as_a_member(staff, healthcare, bob):
    response = _change_org(staff, healthcare, extra=[{"user": str(bob.pk), "role": "member"}])
    assert response.status_code == 200
    assert Membership.objects.get(user=bob).organization.name == "GridCast"
    assert not _audits("organization.member_add").exists()


def test_the_membership_pages_add_change_and_delete_through_the_service(staff, healthcare, alice):
    newcomer = UserFactory(username="nadia")
    add = staff.post(reverse("admin:marketplace_membership_add"),
                     {"user": newcomer.pk, "organization": healthcare.pk, "role": "member"})
    assert add.status_code == 302
    membership = Membership.objects.get(user=newcomer)
    assert _audits("organization.member_add", healthcare).count() == 1

    change = staff.post(reverse("admin:marketplace_membership_change", args=[membership.pk]),
                        {"role": "admin"})
    assert change.status_code == 302
    membership.refresh_from_db()
    assert membership.role == Membership.Role.ADMIN and membership.organization == healthcare
    assert _audits("organization.member_role", healthcare).count() == 1

    alice_row = Membership.objects.get(user=alice)
    staff.post(reverse("admin:marketplace_membership_delete", args=[membership.pk]), {"post": "yes"})
    staff.post(reverse("admin:marketplace_membership_changelist"),
               {"action": "delete_selected", "_selected_action": [alice_row.pk], "post": "yes"})
    assert not Membership.objects.filter(organization=healthcare).exists()
    assert sorted(_audits("organization.member_remove", healthcare).values_list("data__user", flat=True)) == [
        "alice", "nadia"]


# --- Datasets ------------------------------------------------------------------------
def _dataset(org: Organization, name: str) -> Dataset:
    dataset = Dataset(owner=org, name=name, size_bytes=10, rows=10, columns=["a"], sha256="0" * 64)
    dataset.file.save(f"{name}.csv", ContentFile(b"a\n1\n"), save=False)
    dataset.save()
    return dataset


def test_deleting_a_dataset_in_the_admin_goes_through_the_service(staff, healthcare, alice, admin_user):
    unused, busy = _dataset(healthcare, "unused"), _dataset(healthcare, "busy")
    JobFactory(owner=healthcare, created_by=alice, dataset=busy, status=Job.Status.RUNNING)
    deleted = staff.post(reverse("admin:marketplace_dataset_delete", args=[unused.pk]), {"post": "yes"},
                         follow=True)
    assert any("deleted successfully" in m for m in _messages(deleted))
    assert not Dataset.objects.filter(pk=unused.pk).exists()
    assert AuditEvent.objects.get(action="dataset.delete").actor == admin_user

    for response in (
            staff.post(reverse("admin:marketplace_dataset_delete", args=[busy.pk]), {"post": "yes"},
                       follow=True),
            staff.post(reverse("admin:marketplace_dataset_changelist"),
                       {"action": "delete_datasets", "_selected_action": [busy.pk]}, follow=True)):
        assert response.status_code == 200
        assert Dataset.objects.filter(pk=busy.pk).exists()
        shown = _messages(response)
        assert any("has not finished" in m for m in shown) and not any("success" in m for m in shown)
    assert AuditEvent.objects.filter(action="dataset.delete").count() == 1
