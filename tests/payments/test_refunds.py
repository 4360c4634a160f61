"""Refunds: an administrator's forced refund (operatorRefund), and the consumer taking the
deposit back itself once the deadline has passed; the indexer moves the job accordingly."""

from __future__ import annotations

from decimal import Decimal

import pytest

from marketplace.chain import deploy, indexer
from marketplace.errors import Conflict
from marketplace.models import AuditEvent, Job, Settlement, Wallet
from marketplace.selectors.payments import provider_payouts
from marketplace.services import payments

from .support import assignment, committed, funded_job, move, submitted_job, units

pytestmark = pytest.mark.django_db
S = Job.Status
REFUNDED = 3  # JobEscrow.State


def test_an_administrator_refunds_a_funded_job(wallets, healthcare, admin_user):
    job = move(funded_job(healthcare, budget="30"), S.MATCHING)
    consumer = healthcare.wallets.get().address
    before = wallets.balance(consumer)

    with committed():
        tx_hash = payments.escrow_force_refund(job=job, actor=admin_user)

    assert job.events.filter(reason="refund_sent").exists()
    assert AuditEvent.objects.filter(action="escrow.force_refund", object_id=str(job.pk)).exists()
    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert job.status == S.REFUNDED
    assert [e.to_status for e in job.events.exclude(to_status="").order_by("pk")][-2:] == [
        S.CANCELLED, S.REFUNDED]
    assert (job.escrow.status, job.escrow.close_tx) == ("refunded", tx_hash)
    assert wallets.balance(consumer) == before + units("30")  # a refund is a transfer, not a credit
    assert wallets.escrow_of(job.escrow.key)[3] == REFUNDED
    with pytest.raises(Conflict):
        payments.escrow_force_refund(job=job, actor=admin_user)
    assert indexer.index_events() == 0


@pytest.fixture
def holder(wallets, healthcare) -> str:
    """A browser wallet alice's organization linked."""
    account = wallets.w3.eth.accounts[6]
    deploy.mint_to(account, Decimal("100"))
    Wallet.objects.create(organization=healthcare, address=account, kind=Wallet.Kind.EXTERNAL)
    return account


def fund_from(chain, api, user, job: Job, account: str) -> None:
    calls = api.as_user(user).get(f"/api/v1/jobs/{job.pk}/fund-calls/", {"address": account}).data
    for step in ("approve", "fund"):
        chain.w3.eth.send_transaction({"from": account, "to": calls[step]["to"],
                                       "data": calls[step]["data"], "gas": 500_000})
    indexer.index_events()
    job.refresh_from_db()


def reclaim(chain, job: Job, account: str) -> dict:
    """The consumer's own `refund`, from the deadline on."""
    chain.travel_to(int(job.escrow.deadline.timestamp()) + 1)
    receipt = chain.transact(account, chain.escrow.functions.refund(bytes.fromhex(job.escrow.key[2:])))
    assert receipt["status"] == 1
    return receipt


def test_the_consumer_takes_the_deposit_back_after_the_deadline(wallets, api, alice, healthcare, holder):
    job = submitted_job(healthcare, budget="60")
    fund_from(wallets, api, alice, job, holder)
    job = move(job, S.MATCHING)
    assert wallets.balance(holder) == units("40")

    reclaim(wallets, job, holder)

    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert job.status == S.REFUNDED and job.escrow.status == "refunded"
    reasons = list(job.events.order_by("pk").values_list("reason", flat=True))
    assert reasons[-2:] == ["escrow_refunded", "escrow_refunded"]  # cancelled, then refunded
    assert "60.00 tUSD" in job.events.order_by("pk").last().message
    assert wallets.balance(holder) == units("100")


def test_a_deposit_taken_back_before_its_settlement_pays_no_provider(wallets, api, alice, healthcare, holder,
                                                                    carol_node):
    """The platform metered the job but the consumer reclaimed first: the batch skips the
    job, and the statement must not say the provider was paid."""
    job = submitted_job(healthcare, budget="60")
    fund_from(wallets, api, alice, job, holder)
    assignment(job, carol_node, minutes=30, status="cancelled")
    job = move(job, S.MATCHING, S.RUNNING, S.CANCELLED)
    assert payments.settlements_prepare() == 1
    reclaim(wallets, job, holder)

    with committed():
        tx_hash = payments.settlement_batch_send()  # the indexer has not seen the refund yet
    receipt = wallets.w3.eth.get_transaction_receipt(tx_hash)
    assert receipt["status"] == 1 and wallets.escrow.events.SettlementSkipped().process_receipt(receipt)

    assert indexer.index_events() == 2  # the reclaim, then the batch's skip of it
    job.refresh_from_db()
    assert job.status == S.REFUNDED
    assert "already refunded" in job.events.get(reason="settlement_skipped").message
    payout_address = carol_node.provider.wallets.get(is_payout=True).address
    assert wallets.owed(payout_address) == 0
    assert wallets.balance(holder) == units("100")
    assert not Settlement.objects.filter(job=job, status="settled").exists()
    assert [p for p in provider_payouts(carol_node.provider) if p["job"] == job.pk
            and p["status"] == Settlement.Status.SETTLED.label] == []


def test_a_completed_job_whose_deposit_was_taken_back_says_so(wallets, api, alice, healthcare, holder,
                                                             carol_node):
    job = submitted_job(healthcare, budget="60")
    fund_from(wallets, api, alice, job, holder)
    assignment(job, carol_node, minutes=30)
    job = move(job, S.MATCHING, S.RUNNING, S.VERIFYING, S.COMPLETED)

    reclaim(wallets, job, holder)

    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert job.status == S.COMPLETED  # completed work stays completed; only settled may follow
    assert job.escrow.status == "refunded"
    last = job.events.order_by("pk").last()
    assert last.reason == "escrow_refunded" and "60.00 tUSD" in last.message
    assert payments.settlements_prepare() == 0
