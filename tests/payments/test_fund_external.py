"""Funding from a wallet the platform does not hold (`fund-calls`, sent by the browser), an
under-funded deposit and its top-up, and a custodial funding that failed half-way."""

from __future__ import annotations

from decimal import Decimal

import pytest

from marketplace.chain import client, deploy, indexer, sender
from marketplace.chain.client import ChainError
from marketplace.models import ChainTransaction, Escrow, Job, Wallet

from .support import committed, funded_job, submitted_job, units

pytestmark = pytest.mark.django_db
S = Job.Status


@pytest.fixture
def holder(wallets, healthcare) -> str:
    """An account of the node's own (eth-tester's), holding 200 tUSD: a browser wallet that
    alice's organization linked (as Sign-In with Ethereum links it; tests/test_wallets.py)."""
    account = wallets.w3.eth.accounts[5]
    deploy.mint_to(account, Decimal("200"))
    Wallet.objects.create(organization=healthcare, address=account, kind=Wallet.Kind.EXTERNAL)
    return account


def send(chain, sender_: str, call: dict) -> dict:
    tx = chain.w3.eth.send_transaction({"from": sender_, "to": call["to"], "data": call["data"],
                                        "gas": 500_000})
    receipt = chain.w3.eth.get_transaction_receipt(tx)
    assert receipt["status"] == 1
    return receipt


def test_fund_calls_sent_by_a_browser_wallet_fund_the_escrow(api, alice, healthcare, wallets, holder):
    job = submitted_job(healthcare, budget="75")

    r = api.as_user(alice).get(f"/api/v1/jobs/{job.pk}/fund-calls/")  # the only linked wallet

    assert r.status_code == 200, r.data
    calls = r.data
    assert calls["chain_id"] == client.chain_id() and calls["amount_units"] == str(units("75"))
    assert calls["consumer"] == holder and calls["signature"].startswith("0x")
    assert (calls["token"], calls["escrow"]) == (wallets.token.address, wallets.escrow.address)
    assert indexer.index_events() == 0
    send(wallets, holder, calls["approve"])
    send(wallets, holder, calls["fund"])
    assert wallets.balance(holder) == units("125")

    assert indexer.index_events() == 1
    job.refresh_from_db()
    escrow = Escrow.objects.get(job=job)
    assert job.status == S.FUNDED
    assert (escrow.status, escrow.amount, escrow.consumer_address) == ("funded", 75, holder)
    assert escrow.key == calls["job_key"]
    assert ChainTransaction.objects.filter(purpose__in=("approve", "fund")).count() == 0  # not ours


def test_fund_calls_of_another_organizations_job_are_not_found(api, bob, healthcare, wallets):
    job = submitted_job(healthcare)
    assert api.as_user(bob).get(f"/api/v1/jobs/{job.pk}/fund-calls/").status_code == 404


def test_an_underfunded_deposit_waits_for_its_top_up(api, alice, healthcare, wallets, holder):
    job = submitted_job(healthcare, budget="60")
    calls = api.as_user(alice).get(f"/api/v1/jobs/{job.pk}/fund-calls/", {"address": holder}).data
    # The budget is raised after the terms were signed for 60: the deposit falls short.
    assert api.as_user(alice).post(f"/api/v1/jobs/{job.pk}/budget/", {"budget": "90"}).status_code == 200
    wallets.transact(holder, wallets.token.functions.approve(wallets.escrow.address, units("90")))
    assert send(wallets, holder, calls["fund"])["status"] == 1

    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert job.status == S.SUBMITTED
    note = job.events.get(reason="underfunded")
    assert "60.00 tUSD of the 90.00 tUSD" in note.message
    assert Escrow.objects.get(job=job).amount == 60

    # The browser's calls are now a top-up of the difference, sent as they come.
    calls = api.as_user(alice).get(f"/api/v1/jobs/{job.pk}/fund-calls/").data
    assert calls["kind"] == "top_up" and calls["amount"] == "30.000000"
    for step in ("approve", "fund"):
        assert send(wallets, holder, calls[step])["status"] == 1
    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert job.status == S.FUNDED
    assert Escrow.objects.get(job=job).amount == 90
    assert job.events.filter(reason="underfunded").count() == 1


def test_a_custodial_funding_that_fails_after_its_approve_sends_nothing_and_can_be_retried(
        api, alice, healthcare, wallets, monkeypatch):
    """The node stops answering between the approve and the fund: 503, and the approve,
    signed already, is never broadcast (its nonce is not lost); a retry funds the job."""
    earlier = funded_job(healthcare, budget="10")  # the wallet has sent before: its nonce row exists
    job = submitted_job(healthcare, budget="20")
    send_ = sender.send

    def node_gone_at_fund(**kwargs):
        if kwargs["purpose"] == "fund":
            raise ChainError("The chain node does not answer: Connection reset by peer",
                             code="chain_unavailable")
        return send_(**kwargs)

    monkeypatch.setattr(sender, "send", node_gone_at_fund)
    with committed():
        failed = api.as_user(alice).post(f"/api/v1/jobs/{job.pk}/fund/")
    monkeypatch.undo()
    assert failed.status_code == 503, failed.data
    assert not Escrow.objects.filter(job=job).exclude(status="unfunded").exists()

    with committed():
        retried = api.as_user(alice).post(f"/api/v1/jobs/{job.pk}/fund/")

    assert retried.status_code == 200, retried.data
    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert job.status == S.FUNDED and earlier.status == S.FUNDED
    wallet = healthcare.wallets.get().address
    sent = ChainTransaction.objects.filter(sender=wallet).order_by("nonce")
    assert [(t.purpose, t.nonce) for t in sent] == [("approve", 0), ("fund", 1), ("approve", 2), ("fund", 3)]
    assert all(wallets.w3.eth.get_transaction_receipt(t.tx_hash)["status"] == 1 for t in sent)
