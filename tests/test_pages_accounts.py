"""Sign up (create or join), log in, log out, and the organization page."""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from marketplace.models import Membership, Organization

from .factories import UserFactory

pytestmark = pytest.mark.django_db
User = get_user_model()

SIGNUP = {"username": "erin", "email": "erin@gridcast.example", "password": "grid-pass-4421",
          "password_again": "grid-pass-4421", "mode": "create",
          "organization_name": "GridCast Labs", "kind": "consumer", "sector": "energy",
          "join_code": ""}


def test_signup_page_renders(client):
    response = client.get(reverse("signup"))
    assert response.status_code == 200
    assert b"join code" in response.content


def test_signup_creates_an_organization_and_logs_in(client):
    response = client.post(reverse("signup"), SIGNUP)
    assert response.status_code == 302 and response["Location"] == reverse("offers")
    user = User.objects.get(username="erin")
    org = user.membership.organization
    assert org.name == "GridCast Labs" and org.kind == "consumer" and org.sector == "energy"
    assert user.membership.role == Membership.Role.OWNER
    assert client.get(reverse("jobs")).status_code == 200  # logged in


def test_signup_as_provider_lands_on_my_nodes(client):
    response = client.post(reverse("signup"), {**SIGNUP, "kind": "provider",
                                                "organization_name": "Fjord GPU"})
    assert response["Location"] == reverse("provider_nodes")


def test_signup_joins_with_a_join_code(client, healthcare):
    response = client.post(reverse("signup"), {**SIGNUP, "mode": "join",
                                                "organization_name": "",
                                                "join_code": healthcare.join_code})
    assert response.status_code == 302
    member = User.objects.get(username="erin").membership
    assert member.organization == healthcare and member.role == Membership.Role.MEMBER


@pytest.mark.parametrize(("overrides", "field"), [
    ({"mode": "join", "join_code": "nope"}, "join_code"),
    ({"mode": "join", "join_code": ""}, "join_code"),
    ({"password": "123", "password_again": "123"}, "password"),
    ({"password_again": "different-pass-1"}, "password_again"),
    ({"organization_name": ""}, "organization_name"),
    ({"organization_name": "Medisight"}, "organization_name"),
    ({"username": "alice"}, "username"),
])
def test_signup_errors_write_nothing(client, alice, overrides, field):
    orgs = Organization.objects.count()
    response = client.post(reverse("signup"), {**SIGNUP, **overrides})
    assert response.status_code == 200
    assert field in response.context["form"].errors, response.context["form"].errors
    assert not User.objects.filter(username="erin").exists()
    assert Organization.objects.count() == orgs


def test_login_and_logout(client, alice):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    response = client.post(reverse("login"), {"username": "alice", "password": "demo-pass-123"})
    assert response.status_code == 302
    page = client.get(reverse("home")).content.decode()
    assert "Log out" in page and "Medisight" in page
    assert client.get(reverse("logout")).status_code == 405  # log out is a POST
    client.post(reverse("logout"))
    assert "Log in" in client.get(reverse("home")).content.decode()


def test_wrong_password_shows_an_error(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert b"do not match" in response.content


def test_organization_page_for_owner_shows_and_rotates_join_code(client, alice, healthcare):
    client.force_login(alice)
    response = client.get(reverse("organization"))
    assert response.status_code == 200
    assert healthcare.join_code in response.content.decode()
    client.post(reverse("organization_rotate_code"))
    old = healthcare.join_code
    healthcare.refresh_from_db()
    assert healthcare.join_code != old


def test_organization_page_for_member_hides_join_code(client, healthcare):
    member = UserFactory(username="mallory", organization=healthcare,
                         organization__role=Membership.Role.MEMBER)
    client.force_login(member)
    response = client.get(reverse("organization"))
    assert healthcare.join_code not in response.content.decode()
    old = healthcare.join_code
    client.post(reverse("organization_rotate_code"))
    healthcare.refresh_from_db()
    assert healthcare.join_code == old


def test_organization_page_requires_login(client):
    response = client.get(reverse("organization"))
    assert response.status_code == 302 and reverse("login") in response["Location"]
