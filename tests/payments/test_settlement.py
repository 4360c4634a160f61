"""Settlement, exactly once: pending statements are paid in one settleBatch transaction, the
indexer moves the jobs to settled, and nothing (a second batch, a replayed transaction, a
transaction re-broadcast after a crash) pays a job twice."""

from __future__ import annotations

from decimal import Decimal

import pytest

from marketplace.chain import client, deploy, indexer, sender
from marketplace.models import ChainTransaction, Job, Settlement
from marketplace.services import payments
from workers.tasks_chain import settle_pending

from .support import committed, completed_job, funded_job, move, units

pytestmark = pytest.mark.django_db
S = Job.Status
FUNDED, SETTLED = 1, 2  # JobEscrow.State


@pytest.fixture
def done(wallets, healthcare, energy, carol_node, dave_node) -> list[Job]:
    """Three funded jobs that completed: two of Medisight's, one of GridCast's, on carol's
    and dave's nodes."""
    jobs = [completed_job(healthcare, carol_node, minutes=30, price="1.20"),            # 0.60
            completed_job(healthcare, dave_node, minutes=60, gpus=2, price="1.00"),     # 2.00
            completed_job(energy, carol_node, minutes=15, price="2.00", budget="40")]   # 0.50
    assert payments.settlements_prepare() == 3
    return jobs


def statuses(jobs: list[Job]) -> set[str]:
    return set(Job.objects.filter(pk__in=[j.pk for j in jobs]).values_list("status", flat=True))


def settle_txs() -> list[ChainTransaction]:
    return list(ChainTransaction.objects.filter(purpose="settle"))


def expected_credits(jobs: list[Job]) -> dict[str, int]:
    """What the escrow should credit: each payout address, the treasury, each consumer."""
    credit: dict[str, Decimal] = {}
    for job in jobs:
        s = Settlement.objects.get(job=job)
        for p in s.payouts.all():
            credit[p.address] = credit.get(p.address, Decimal(0)) + p.amount
        treasury = deploy.treasury_address()
        credit[treasury] = credit.get(treasury, Decimal(0)) + s.fee
        consumer = job.owner.wallets.get().address
        credit[consumer] = credit.get(consumer, Decimal(0)) + s.refunded
    return {address: units(amount) for address, amount in credit.items()}


def assert_paid_once(chain, jobs: list[Job]) -> None:
    for address, amount in expected_credits(jobs).items():
        assert chain.owed(address) == amount, address
    for job in jobs:
        assert chain.escrow_of(job.escrow.key)[3] == SETTLED


def test_a_batch_pays_every_pending_job_in_one_transaction(wallets, done, carol_node):
    with committed():
        tx_hash = payments.settlement_batch_send()

    assert [t.tx_hash for t in settle_txs()] == [tx_hash]
    assert set(Settlement.objects.values_list("status", "transaction__tx_hash")) == {("submitted", tx_hash)}
    assert indexer.index_events() == 3
    assert statuses(done) == {S.SETTLED}
    assert set(Settlement.objects.values_list("status", flat=True)) == {"settled"}
    assert_paid_once(wallets, done)
    carol_payout = carol_node.provider.wallets.get(is_payout=True).address
    assert wallets.owed(carol_payout) == units("0.57") + units("0.475")  # 0.60 and 0.50, less 5 %
    timeline = done[1].events.order_by("pk").last()
    assert timeline.reason == "escrow_settled" and "1.90 tUSD to providers" in timeline.message

    with committed():
        assert payments.settlement_batch_send() is None  # nothing left to pay
    assert len(settle_txs()) == 1


def test_a_replayed_batch_pays_nothing_twice(wallets, done):
    with committed():
        tx_hash = payments.settlement_batch_send()
    indexer.index_events()
    original = ChainTransaction.objects.get(tx_hash=tx_hash)
    calldata = wallets.w3.eth.get_transaction(tx_hash)["input"]

    sender.broadcast(original)  # the very same bytes again: the node has them already
    with committed():  # the same Settlement structs, in a new transaction
        replay = sender.send(key=deploy.operator_key(), purpose="settle",
                             tx={"to": wallets.escrow.address, "data": calldata})
    receipt = wallets.w3.eth.get_transaction_receipt(replay.tx_hash)

    assert receipt["status"] == 1
    skipped = wallets.escrow.events.SettlementSkipped().process_receipt(receipt)
    assert sorted(e["args"]["jobId"].hex() for e in skipped) == sorted(j.escrow.key[2:] for j in done)
    assert wallets.escrow.events.JobSettled().process_receipt(receipt) == ()
    assert indexer.index_events() == 3  # the skips, recorded: each job's timeline says why
    for job in done:
        skipped = job.events.get(reason="settlement_skipped")
        assert skipped.data == {"tx": replay.tx_hash, "state": SETTLED}
        assert "already settled" in skipped.message
    assert indexer.index_events() == 0
    assert statuses(done) == {S.SETTLED}
    assert set(Settlement.objects.values_list("status", flat=True)) == {"settled"}
    assert_paid_once(wallets, done)


def test_a_settlement_signed_but_never_broadcast_is_sent_later_with_the_same_hash(
        wallets, done, monkeypatch):
    def node_down(raw):
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(client.w3().eth, "send_raw_transaction", node_down)
    with committed():
        tx_hash = payments.settlement_batch_send()
    monkeypatch.undo()
    stored = ChainTransaction.objects.get(tx_hash=tx_hash)
    assert (stored.status, stored.broadcasts) == ("signed", 1) and "Connection refused" in stored.error
    assert set(Settlement.objects.values_list("status", flat=True)) == {"submitted"}
    assert wallets.escrow_of(done[0].escrow.key)[3] == FUNDED
    with committed():
        assert payments.settlement_batch_send() is None  # submitted: not put in a second batch

    assert sender.resend_stale(older_than_s=0) == 1

    stored.refresh_from_db()
    assert stored.status == "sent" and stored.error == ""
    assert sender.check(stored).status == "confirmed"
    assert [t.tx_hash for t in settle_txs()] == [tx_hash]
    assert indexer.index_events() == 3
    assert_paid_once(wallets, done)
    assert sender.resend_stale(older_than_s=0) == 0


def test_the_periodic_task_meters_pays_and_reads_back_in_one_go(wallets, healthcare, carol_node):
    jobs = [completed_job(healthcare, carol_node, minutes=m) for m in (10, 20)]

    tx_hash = settle_pending()

    assert tx_hash and ChainTransaction.objects.get(tx_hash=tx_hash).status == "confirmed"
    assert statuses(jobs) == {S.SETTLED}
    assert_paid_once(wallets, jobs)
    assert settle_pending() is None


def test_a_cancelled_funded_job_that_never_ran_is_refunded_whole(wallets, healthcare):
    job = move(funded_job(healthcare, budget="25"), S.CANCELLED)
    consumer = healthcare.wallets.get().address

    tx_hash = settle_pending()

    assert tx_hash
    job.refresh_from_db()
    assert job.status == S.REFUNDED and job.escrow.status == "refunded"
    assert wallets.owed(consumer) == units("25")
    assert Settlement.objects.get(job=job).charged == 0


def test_a_batch_that_reverted_on_chain_is_paid_by_a_later_one(wallets, done, monkeypatch):
    """The batch was signed and stored, the escrow got paused (by a separate pauser) before
    it went out, and the re-sent batch reverted: its jobs go back to pending and the next
    batch pays them, once."""
    escrow, pauser = wallets.escrow, wallets.w3.eth.accounts[0]
    with committed():  # the admin (the operator, on development chains) appoints a pauser
        sender.send(key=deploy.operator_key(), purpose="settle", call=escrow.functions.grantRole(
            escrow.functions.PAUSER_ROLE().call(), pauser))

    def node_down(raw):
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(client.w3().eth, "send_raw_transaction", node_down)
    with committed():
        first = payments.settlement_batch_send()
    monkeypatch.undo()
    wallets.transact(pauser, escrow.functions.pause())
    assert sender.resend_stale(older_than_s=0) == 1
    assert sender.check(ChainTransaction.objects.get(tx_hash=first)).status == "reverted"
    wallets.transact(pauser, escrow.functions.unpause())

    assert payments.settlements_retry_reverted() == 3
    with committed():
        second = payments.settlement_batch_send()

    assert second != first
    assert indexer.index_events() == 3
    assert set(Settlement.objects.values_list("status", "transaction__tx_hash")) == {("settled", second)}
    assert statuses(done) == {S.SETTLED}
    assert_paid_once(wallets, done)
    assert payments.settlements_retry_reverted() == 0


def test_a_provider_without_a_payout_wallet_holds_its_settlement_and_says_why(wallets, healthcare,
                                                                               carol_node):
    from marketplace.models import Wallet

    Wallet.objects.filter(organization=carol_node.provider).delete()
    job = completed_job(healthcare, carol_node, minutes=30, price="1.20")
    assert payments.settlements_prepare() == 1
    for _ in range(2):  # two passes, one note
        with committed():
            assert payments.settlement_batch_send() is None
    assert Settlement.objects.get(job=job).status == "pending"
    notes = job.events.filter(reason="payout_wallet_missing")
    assert notes.count() == 1 and carol_node.provider.name in notes.get().message

    wallet = Wallet.objects.create(organization=carol_node.provider, address=wallets.w3.eth.accounts[6],
                                   kind="external",
                                   is_payout=True)
    with committed():
        assert payments.settlement_batch_send() is None  # this pass fills the address in
        tx_hash = payments.settlement_batch_send()
    assert tx_hash and indexer.index_events() == 1
    assert Job.objects.get(pk=job.pk).status == S.SETTLED
    assert wallets.owed(wallet.address) == units("0.57")
