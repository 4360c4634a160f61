"""Slashing against a real JSON-RPC node (hardhat) with real Celery workers on the `chain`
queue: the task `workers.tasks_chain.dispute_slash`, enqueued by name as the verifier does,
slashes once however often it arrives, and a worker SIGKILLed in the middle of a slash
leaves the dispute slashed once (the stored transaction is re-broadcast and indexed)."""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis
from celery import Celery

from marketplace.chain import deploy, indexer, sender
from marketplace.models import ChainContract, ChainTransaction, Dispute, DisputeSlash, Escrow, Job
from marketplace.services import funding, staking

from ..factories import JobFactory
from ..stack import wait_for
from . import test_chain_integration as ci
from .support import assignment, committed, units
from .test_chain_integration import MINT, REDIS_URL, chain_deploy, consumer, cpu_provider, stack_for

node, on_node = ci.node, ci.on_node  # the hardhat node and this process on it (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]
TASK = "workers.tasks_chain.dispute_slash"


def slashed_events() -> list[dict]:
    stake = deploy.stake_contract()
    since = ChainContract.objects.get(name="stake").block_number
    return [dict(e["args"]) for e in stake.events.Slashed().get_logs(from_block=since)]


def a_dispute(minutes: float = 60) -> tuple[Dispute, str, str]:
    """A staked provider (50 tUSD) whose work on a funded job is disputed; returns the
    dispute, the consumer's and the provider's addresses."""
    org, _ = consumer()
    provider, node_row, _ = cpu_provider()
    chain_deploy()
    with committed():
        op = staking.stake_deposit(organization=provider, amount="50")
    sender.wait(op.transaction)
    job = JobFactory(owner=org, status=Job.Status.SUBMITTED, budget=Decimal("5"))
    with committed():
        funding.job_fund(job=job)
    for tx in ChainTransaction.objects.exclude(status="confirmed"):
        sender.wait(tx)
    indexer.index_events()
    a = assignment(job, node_row, minutes=minutes, price="3.00")  # 3 tUSD of work × 2 = 6 tUSD
    dispute = Dispute.objects.create(job=job, assignment=a, provider=provider,
                                     reason=Dispute.Reason.REPLAY_MISMATCH)
    return dispute, Escrow.objects.get(job=job).consumer_address, provider.wallets.get().address


def test_the_task_enqueued_twice_slashes_once(on_node, tmp_path):
    dispute, consumer_address, provider_address = a_dispute()
    redis.Redis.from_url(REDIS_URL).flushdb()
    stack = stack_for(tmp_path, on_node, queues="chain")
    try:
        stack.worker("slash-worker", beat=False)
        broker = Celery(broker=REDIS_URL, set_as_current=False)  # the stack's broker
        for _ in range(2):
            broker.send_task(TASK, args=[dispute.pk], queue="chain")

        def slashed():
            dispute.refresh_from_db()
            return dispute.status == "slashed"

        wait_for(slashed, timeout=90, what="the dispute to be slashed")
        wait_for(lambda: not ChainTransaction.objects.filter(purpose="slash").exclude(
            status="confirmed").exists(), timeout=30, what="the slash to be confirmed")
    finally:
        stack.stop()

    events = slashed_events()
    # To the treasury, never to the consumer (issue 12, item 5).
    assert len(events) == 1 and events[0]["recipient"] == deploy.treasury_address() != consumer_address
    assert events[0]["amount"] == units("6") == units(dispute.slash_amount)
    assert ChainTransaction.objects.filter(purpose="slash").count() == 1
    assert deploy.stake_contract().functions.stakes(provider_address).call()[0] == units("44")
    assert deploy.token_contract().functions.balanceOf(consumer_address).call() == units(MINT - 5)


def test_a_worker_killed_mid_slash_leaves_the_dispute_slashed_once(on_node, tmp_path):
    dispute, consumer_address, _ = a_dispute(minutes=30)
    redis.Redis.from_url(REDIS_URL).flushdb()
    stack = stack_for(tmp_path, on_node, queues="chain", CHAIN_RESEND_AFTER_S="1")
    try:
        stack.worker("slash-worker-a", beat=False)
        Celery(broker=REDIS_URL, set_as_current=False).send_task(TASK, args=[dispute.pk], queue="chain")
        wait_for(lambda: DisputeSlash.objects.filter(dispute=dispute, transaction__isnull=False).exists(),
                 timeout=90, every=0.01, what="worker A to store the slash")
        stack.kill("slash-worker-a")
        at_kill = ChainTransaction.objects.get(purpose="slash").status
        # Nobody sends the task again: worker B's beat (chain_sync) re-broadcasts what is
        # stored and the indexer marks the dispute slashed.
        stack.worker("slash-worker-b", beat=True)

        def slashed():
            dispute.refresh_from_db()
            return dispute.status == "slashed"

        wait_for(slashed, timeout=90, what=f"the dispute to be slashed (worker A killed at {at_kill})")
    finally:
        stack.stop()

    assert ChainTransaction.objects.filter(purpose="slash").count() == 1
    events = slashed_events()
    assert len(events) == 1
    assert (events[0]["amount"], events[0]["recipient"]) == (units("3"), deploy.treasury_address())
