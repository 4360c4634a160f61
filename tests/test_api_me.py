"""GET /api/v1/me/: who the token belongs to."""

import pytest

from marketplace.models import Membership

from .factories import UserFactory

URL = "/api/v1/me/"
pytestmark = pytest.mark.django_db


def test_a_consumer_sees_its_organization_and_role(api, alice, healthcare):
    response = api.as_user(alice).get(URL)
    assert response.status_code == 200
    assert response.json() == {
        "username": "alice", "is_staff": False, "role": "owner",
        "organization": {"id": healthcare.pk, "name": "Medisight", "kind": "consumer",
                         "is_suspended": False}}


def test_a_providers_member_sees_its_role(api, provider_org):
    erin = UserFactory(username="erin", organization=provider_org,
                       organization__role=Membership.Role.MEMBER)
    body = api.as_user(erin).get(URL).json()
    assert (body["username"], body["role"], body["organization"]["kind"]) == (
        "erin", "member", "provider")


def test_staff_without_an_organization(api, admin_user):
    body = api.as_user(admin_user).get(URL).json()
    assert body == {"username": "admin", "is_staff": True, "organization": None, "role": None}


def test_anonymous_and_a_bad_token_are_401(api):
    assert api.as_user(None).get(URL).status_code == 401
    api.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    response = api.get(URL)
    assert response.status_code == 401 and response.json()["detail"]


def test_writes_are_not_allowed(api, alice):
    assert api.as_user(alice).post(URL, {}, format="json").status_code == 405
