"""The stake over the API (/api/v1/stake/) and on the provider's Stake page: each provider
acts on its own stake only, consumers and strangers are refused, bad input is a 4xx with a
message, and a retried request sends nothing new."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from marketplace.chain import deploy, indexer, sender
from marketplace.models import ChainTransaction, StakeOperation

from .support import committed, units

pytestmark = pytest.mark.django_db
RID = "7b0e3c1e-8c0d-4a53-9a57-1f6f3f1b2c3d"


@pytest.fixture
def funded_providers(wallets, provider_org, other_provider_org):
    for org in (provider_org, other_provider_org):
        deploy.mint_to(org.wallets.get().address, Decimal("500"))
    return wallets


def post(api, user, path: str, body: dict):
    with committed():
        return api.as_user(user).post(f"/api/v1/stake/{path}/", body, format="json")


def settle_chain() -> None:
    for tx in ChainTransaction.objects.filter(status__in=("signed", "sent")).order_by("sender", "nonce"):
        sender.wait(tx)
    indexer.index_events()


def test_a_provider_stakes_over_the_api_once_per_request_id(api, carol, dave, provider_org,
                                                            funded_providers):
    first = post(api, carol, "deposit", {"amount": "120", "request_id": RID})
    assert first.status_code == 202, first.content
    again = post(api, carol, "deposit", {"amount": "120", "request_id": RID})
    assert again.status_code == 202 and again.json()["tx_hash"] == first.json()["tx_hash"]
    settle_chain()
    address = provider_org.wallets.get().address
    assert funded_providers.balance(address) == units("380")
    mine = api.as_user(carol).get("/api/v1/stake/").json()
    assert (mine["staked"], mine["pending"]) == ("120.000000", "0.000000")
    assert [a["address"] for a in mine["addresses"]] == [address]
    assert [h["kind"] for h in mine["history"]] == ["Staked"]
    # Another provider sees its own (empty) stake, never carol's.
    theirs = api.as_user(dave).get("/api/v1/stake/").json()
    assert theirs["staked"] == "0.000000" and theirs["addresses"] == []
    # ...and cannot reuse carol's request id to learn about or replay her operation.
    stolen = post(api, dave, "deposit", {"amount": "1", "request_id": RID})
    assert stolen.status_code == 409 and "another organization" in stolen.json()["detail"]
    assert StakeOperation.objects.filter(organization__in=[provider_org]).count() == 1


@pytest.mark.parametrize("who", ["alice", None])
def test_consumers_and_strangers_are_refused(request, api, who, funded_providers):
    user = request.getfixturevalue(who) if who else None
    expected = 403 if user else 401
    assert api.as_user(user).get("/api/v1/stake/").status_code == expected
    for path, body in (("deposit", {"amount": "1"}), ("request-withdrawal", {"amount": "1"}),
                       ("withdraw", {})):
        assert post(api, user, path, body).status_code == expected
    assert not ChainTransaction.objects.filter(purpose="stake").exists()


@pytest.mark.parametrize(("path", "body", "status", "text"), [
    ("deposit", {}, 400, "amount"),
    ("deposit", {"amount": "abc"}, 400, "amount"),
    ("deposit", {"amount": "0"}, 400, "more than 0"),
    ("deposit", {"amount": "100000"}, 409, "less than"),
    ("deposit", {"amount": "1", "request_id": "nope"}, 400, "request_id"),
    ("request-withdrawal", {"amount": "5"}, 400, "you cannot withdraw"),
    ("withdraw", {}, 409, "Nothing is pending"),
])
def test_bad_input_is_a_clear_4xx(api, carol, funded_providers, path, body, status, text):
    response = post(api, carol, path, body)
    assert response.status_code == status, response.content
    assert text in response.content.decode()
    assert not ChainTransaction.objects.filter(purpose="stake").exists()


def test_withdrawal_over_the_api_waits_for_the_delay(api, carol, provider_org, funded_providers):
    assert post(api, carol, "deposit", {"amount": "50"}).status_code == 202
    settle_chain()
    assert post(api, carol, "request-withdrawal", {"amount": "20"}).status_code == 202
    settle_chain()
    early = post(api, carol, "withdraw", {})
    assert early.status_code == 409 and "unlocks at" in early.json()["detail"]
    unlock = api.as_user(carol).get("/api/v1/stake/").json()["addresses"][0]["unlock_at"]
    assert unlock is not None
    _, _, unlock_ts = deploy.stake_contract().functions.stakes(provider_org.wallets.get().address).call()
    funded_providers.travel_to(unlock_ts + 1)
    assert post(api, carol, "withdraw", {}).status_code == 202
    settle_chain()
    assert api.as_user(carol).get("/api/v1/stake/").json()["pending"] == "0.000000"
    assert funded_providers.balance(provider_org.wallets.get().address) == units("470")


def test_the_stake_page_stakes_and_shows_form_errors(client, carol, provider_org, funded_providers):
    client.force_login(carol)
    page = client.get(reverse("provider_stake"))
    assert page.status_code == 200 and b'data-testid="stake-form"' in page.content
    bad = client.post(reverse("provider_stake"), {"action": "stake", "stake-amount": "-3",
                                                  "stake-request_id": RID})
    assert bad.status_code == 400 and "greater than or equal to" in bad.content.decode()
    too_much = client.post(reverse("provider_stake"), {"action": "request_withdrawal",
                                                       "request_withdrawal-amount": "10",
                                                       "request_withdrawal-request_id": RID})
    assert too_much.status_code == 400 and "you cannot withdraw" in too_much.content.decode()
    with committed():
        ok = client.post(reverse("provider_stake"), {"action": "stake", "stake-amount": "25",
                                                     "stake-request_id": RID})
    assert ok.status_code == 302
    settle_chain()
    shown = client.get(reverse("provider_stake")).content.decode()
    assert 'data-testid="staked">25.00<' in shown and "Staked" in shown


def test_the_stake_page_is_for_providers_only(client, alice, funded_providers):
    client.force_login(alice)
    assert client.get(reverse("provider_stake")).status_code == 403
    assert client.post(reverse("provider_stake"), {"action": "withdraw",
                                                   "withdraw-request_id": RID}).status_code == 403
