"""One sign-in throttle for the login page and POST /api/v1/auth/token/ (issue 13, item 4),
by account and by client address, where the address comes from X-Forwarded-For only behind
TRUSTED_PROXY_COUNT trusted proxies. The test settings switch DRF's throttles off; this one is
not a DRF throttle and applies here as in production (counts in the cache, cleared per test)."""

import pytest
from django.urls import reverse
from rest_framework.test import APIClient
from rest_framework.throttling import AnonRateThrottle

pytestmark = pytest.mark.django_db
TOKEN = "/api/v1/auth/token/"
PASSWORD = "demo-pass-123"  # tests/factories.py


@pytest.fixture(autouse=True)
def limits(settings):
    settings.LOGIN_FAILURES_PER_ACCOUNT = 5
    settings.LOGIN_FAILURES_PER_ADDRESS = 8
    settings.LOGIN_FAILURE_WINDOW_S = 600


def _token(username, password, *, xff=None, remote="203.0.113.50"):
    extra = {"REMOTE_ADDR": remote}
    if xff is not None:
        extra["HTTP_X_FORWARDED_FOR"] = xff
    return APIClient().post(TOKEN, {"username": username, "password": password}, format="json", **extra)


def _page(client, username, password, *, xff=None, remote="203.0.113.50"):
    extra = {"REMOTE_ADDR": remote}
    if xff is not None:
        extra["HTTP_X_FORWARDED_FOR"] = xff
    return client.post(reverse("login"), {"username": username, "password": password}, **extra)


def test_rotating_x_forwarded_for_does_not_reset_the_token_endpoints_count(alice):
    for i in range(5):
        assert _token("alice", "guess", xff=f"10.0.{i}.1").status_code == 400
    refused = _token("alice", PASSWORD, xff="10.9.9.9")  # even the right password, until the window ends
    assert refused.status_code == 429, refused.content
    assert "Too many failed sign-ins" in refused.json()["detail"]
    assert 0 < int(refused["Retry-After"]) <= 601


def test_rotating_x_forwarded_for_does_not_reset_the_login_pages_count(client, alice):
    for i in range(5):
        response = _page(client, "alice", "guess", xff=f"10.0.{i}.1")
        assert response.status_code == 200 and b"do not match" in response.content
    refused = _page(client, "alice", PASSWORD, xff="10.9.9.9")
    assert refused.status_code == 429 and b"Too many failed sign-ins" in refused.content
    assert "_auth_user_id" not in client.session


def test_one_address_guessing_many_accounts_is_refused_on_both(client, alice):
    for i in range(8):  # a different account each time, and a different forged header
        assert _token(f"nobody{i}", "guess", xff=f"10.1.{i}.1").status_code == 400
    assert _token("alice", PASSWORD, xff="10.1.99.1").status_code == 429
    assert _page(client, "alice", PASSWORD, xff="10.1.99.2").status_code == 429
    # Another address is not held back by it.
    assert _token("alice", PASSWORD, remote="198.51.100.7").status_code == 200


def test_the_page_and_the_token_endpoint_share_the_count(client, alice):
    for i in range(3):
        _token("alice", "guess", xff=f"10.2.{i}.1")
    for i in range(2):
        _page(client, "alice", "guess", xff=f"10.3.{i}.1", remote="198.51.100.8")
    assert _token("alice", PASSWORD, remote="192.0.2.1").status_code == 429
    assert _page(client, "alice", PASSWORD, remote="192.0.2.2").status_code == 429


def test_a_success_restarts_the_accounts_count(alice):
    for _ in range(4):
        _token("alice", "guess")
    assert _token("alice", PASSWORD).status_code == 200
    for _ in range(4):
        assert _token("alice", "guess", remote="198.51.100.9").status_code == 400


def test_behind_one_trusted_proxy_real_clients_are_counted_apart(settings, client, alice, bob):
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = "10.0.0.2"  # every request arrives from the proxy, which appends the client it heard
    for i in range(8):
        # The attacker writes its own header; the proxy appends its real address last.
        forged = f"192.0.2.{i}, 203.0.113.66"
        assert _token(f"nobody{i}", "guess", xff=forged, remote=proxy).status_code == 400
    assert _token("nobody-else", "guess", xff="1.1.1.1, 203.0.113.66", remote=proxy).status_code == 429
    assert _page(client, "nobody-else", "guess", xff="203.0.113.66", remote=proxy).status_code == 429
    # Another real client behind the same proxy signs in on both.
    assert _token("bob", PASSWORD, xff="198.51.100.20", remote=proxy).status_code == 200
    assert _page(client, "bob", PASSWORD, xff="198.51.100.20", remote=proxy).status_code == 302


def test_drf_throttles_ignore_a_forged_header_by_default(rf):
    # Unset, DRF's NUM_PROXIES keyed anonymous throttles on the whole X-Forwarded-For header.
    request = rf.get("/", HTTP_X_FORWARDED_FOR="10.0.0.1", REMOTE_ADDR="203.0.113.5")
    assert AnonRateThrottle().get_ident(request) == "203.0.113.5"
