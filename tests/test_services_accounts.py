import pytest
from django.contrib.auth import authenticate

from marketplace.errors import MarketError, PermissionDenied
from marketplace.models import Membership, Organization
from marketplace.services.accounts import organization_rotate_join_code, user_signup

from .factories import UserFactory


def test_signup_creates_an_organization_owned_by_the_user(db):
    user = user_signup(username="nina", email="nina@cardio.example", password="s3cure-Pass-77",
                       organization_name="CardioAI", kind="consumer", sector="healthcare")
    member = Membership.objects.get(user=user)
    assert member.role == Membership.Role.OWNER
    assert member.organization.kind == Organization.Kind.CONSUMER
    assert member.organization.sector == "healthcare"
    assert authenticate(username="nina", password="s3cure-Pass-77") == user


def test_signup_with_a_join_code_joins_as_member(healthcare):
    user = user_signup(username="ola", email="", password="s3cure-Pass-77",
                       join_code=healthcare.join_code)
    assert user.membership.organization == healthcare
    assert user.membership.role == Membership.Role.MEMBER


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"join_code": "nope"}, "join_code"),
    ({"organization_name": ""}, "organization_name"),
    ({"organization_name": "X", "kind": "landlord"}, "kind"),
    ({"organization_name": "X", "kind": "consumer", "sector": "mining"}, "sector"),
    ({"organization_name": "Medisight", "kind": "consumer"}, "organization_name"),
])
def test_signup_bad_input_names_the_field_and_writes_nothing(healthcare, kwargs, field):
    orgs = Organization.objects.count()
    with pytest.raises(MarketError) as err:
        user_signup(username="pat", email="", password="s3cure-Pass-77", **kwargs)
    assert err.value.field == field
    assert Organization.objects.count() == orgs
    assert not Membership.objects.filter(user__username="pat").exists()


def test_signup_rejects_weak_password_and_taken_username(alice):
    with pytest.raises(MarketError) as err:
        user_signup(username="pat", email="", password="123", organization_name="P",
                    kind="consumer")
    assert err.value.field == "password"
    with pytest.raises(MarketError) as err:
        user_signup(username="ALICE", email="", password="s3cure-Pass-77",
                    organization_name="P", kind="consumer")
    assert err.value.field == "username"


def test_only_owners_rotate_the_join_code(alice, healthcare, bob):
    old = healthcare.join_code
    member = UserFactory(username="mo")
    Membership.objects.create(user=member, organization=healthcare, role="member")
    with pytest.raises(PermissionDenied):
        organization_rotate_join_code(organization=healthcare, actor=member)
    with pytest.raises(PermissionDenied):
        organization_rotate_join_code(organization=healthcare, actor=bob)
    new = organization_rotate_join_code(organization=healthcare, actor=alice)
    healthcare.refresh_from_db()
    assert new != old and healthcare.join_code == new
