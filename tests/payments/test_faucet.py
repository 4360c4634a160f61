"""The development faucet (services/faucet.py): a new organization gets a custodial wallet
and test tUSD on a development chain, never more than FAUCET_AMOUNT however often it
clicks, and nothing at all on a chain that is not a development one."""

from __future__ import annotations

from decimal import Decimal

import pytest

from marketplace.chain import deploy
from marketplace.errors import Conflict
from marketplace.models import ChainTransaction, FaucetGrant, Organization, Wallet
from marketplace.services.accounts import user_signup
from marketplace.services.faucet import faucet_claim

from .support import committed, units

pytestmark = pytest.mark.django_db


def minted() -> int:
    return ChainTransaction.objects.filter(purpose="mint").count()


def test_a_new_organization_gets_a_development_wallet_at_sign_up(chain):
    user = user_signup(username="hana", email="hana@example.org", password="a-long-pass-phrase-9",
                       organization_name="Cardia Labs", kind="consumer", sector="healthcare")
    org = Organization.objects.get(name="Cardia Labs")
    wallet = org.wallets.get()
    assert wallet.kind == Wallet.Kind.CUSTODIAL and wallet.encrypted_key
    assert user.membership.organization == org
    assert chain.balance(wallet.address) == 0  # money only from the faucet


def test_the_faucet_tops_the_wallet_up_once_and_refuses_repeated_claims(chain, settings, healthcare, alice):
    settings.FAUCET_AMOUNT = Decimal("250")
    with committed():
        grant = faucet_claim(organization=healthcare, actor=alice)
    wallet = healthcare.wallets.get(kind="custodial")  # created on first use (the fixture's org had none)
    assert grant.amount == Decimal("250") and grant.wallet == wallet
    assert chain.balance(wallet.address) == units("250")
    assert chain.w3.eth.get_balance(wallet.address) > 0  # gas to send its approval and funding
    assert grant.transaction.status == "confirmed" and grant.transaction.purpose == "mint"

    for _ in range(3):  # double clicks, a retried request
        with pytest.raises(Conflict) as refused, committed():
            faucet_claim(organization=healthcare, actor=alice)
        assert refused.value.code == "faucet_rate_limited"
    assert FaucetGrant.objects.count() == 1 and minted() == 1
    assert chain.balance(wallet.address) == units("250")


def test_after_its_interval_the_faucet_only_tops_up_what_was_spent(chain, settings, healthcare, alice):
    settings.FAUCET_AMOUNT, settings.FAUCET_INTERVAL_S = Decimal("100"), 0
    with committed():
        faucet_claim(organization=healthcare, actor=alice)
    with pytest.raises(Conflict) as full, committed():
        faucet_claim(organization=healthcare, actor=alice)
    assert full.value.code == "faucet_not_needed"
    wallet = healthcare.wallets.get()
    # Spend 40 (a transfer away from the custodial wallet), then claim again: 40 comes back.
    from marketplace.chain import sender
    from marketplace.services.wallets import custodial_key

    stranger = chain.w3.eth.accounts[3]
    with committed():
        tx = sender.send(key=custodial_key(wallet), purpose="approve",
                         call=chain.token.functions.transfer(stranger, units("40")))
    sender.wait(tx)
    with committed():
        again = faucet_claim(organization=healthcare, actor=alice)
    assert again.amount == Decimal("40")
    assert chain.balance(wallet.address) == units("100")


def test_the_faucet_refuses_a_chain_that_is_not_a_development_one(chain, monkeypatch, settings, healthcare,
                                                                  alice):
    monkeypatch.setattr(deploy, "DEV_CHAIN_IDS", frozenset({1}))  # this chain's id is not a development one
    with pytest.raises(Conflict) as refused:
        faucet_claim(organization=healthcare, actor=alice)
    assert refused.value.code == "not_dev_chain" and "development chains" in refused.value.message
    monkeypatch.undo()
    settings.CHAIN_TOKEN_ADDRESS = chain.token.address  # a configured (real) token is never minted
    with pytest.raises(Conflict) as refused:
        faucet_claim(organization=healthcare, actor=alice)
    assert refused.value.code == "not_dev_chain"
    assert minted() == 0 and not FaucetGrant.objects.exists() and not healthcare.wallets.exists()


def test_the_faucet_button_answers_with_a_clear_message(chain, client, monkeypatch, healthcare, alice):
    client.force_login(alice)
    with committed():
        first = client.post("/account/faucet/", {"next": "/jobs/"})
    assert first.status_code == 302 and first["Location"] == "/jobs/"
    with committed():
        second = client.post("/account/faucet/", {"next": "https://evil.example/"}, follow=True)
    assert second.redirect_chain[-1][0] == "/account/"  # never off-site
    assert "gives again from" in second.content.decode()
    monkeypatch.setattr(deploy, "DEV_CHAIN_IDS", frozenset({1}))
    page = client.post("/account/faucet/", follow=True)
    assert page.status_code == 200 and "only on development chains" in page.content.decode()
    assert FaucetGrant.objects.count() == 1


def test_the_escrow_panel_says_what_to_do_without_a_browser_wallet(chain, client, monkeypatch, healthcare,
                                                                   alice):
    from .support import submitted_job

    job = submitted_job(healthcare, budget="30")
    client.force_login(alice)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'data-testid="fund-faucet"' in page and "Get a development wallet and test tUSD" in page
    assert 'data-testid="no-browser-wallet"' in page and "This is a development chain" in page
    monkeypatch.setattr(deploy, "DEV_CHAIN_IDS", frozenset({1}))  # a real chain: no faucet to offer
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'data-testid="fund-faucet"' not in page
    assert "Install a browser wallet" in page and f"/api/v1/jobs/{job.pk}/fund-calls/" in page


def test_a_grant_tells_the_organization_s_open_pages_and_no_other(chain, healthcare, energy, alice):
    """Issue 18: the header balance and the Account page of the organization's open pages
    refresh after a grant (an "account" message on its dashboard group, sent once the mint
    is mined); another organization's group hears nothing. The listener runs on its own
    event loop in a thread, as a server process would: the layer only delivers to a
    channel that is listening when the message is sent."""
    import asyncio
    import threading

    from channels.layers import get_channel_layer

    from marketplace.services import live

    ready, heard = threading.Event(), {}

    async def listen():
        layer = get_channel_layer()
        channels = {}
        for name, org in (("mine", healthcare), ("theirs", energy)):
            channels[name] = await layer.new_channel()
            await layer.group_add(live.org_group(org.pk), channels[name])
        ready.set()

        async def first(name):
            try:
                heard[name] = (await asyncio.wait_for(layer.receive(channels[name]), timeout=10))["message"]
            except TimeoutError:
                heard[name] = None
        await asyncio.gather(first("mine"), first("theirs"))

    listener = threading.Thread(target=lambda: asyncio.run(listen()))
    listener.start()
    assert ready.wait(10)
    with committed():
        faucet_claim(organization=healthcare, actor=alice)
    listener.join(20)
    assert heard == {"mine": {"type": "account", "job_id": None}, "theirs": None}
