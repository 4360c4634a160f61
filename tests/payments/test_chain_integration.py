"""Payments against a real JSON-RPC node (hardhat 3, chain id 31337) and the real platform:
daphne, Celery workers with beat consuming the `chain` queue, a CPU agent, PostgreSQL and
Redis. Fund → train → settle through the API; a worker SIGKILLed in the middle of a
settlement; 200 settlements sent by two workers at once."""

from __future__ import annotations

import io
import os
import re
import secrets
from datetime import timedelta
from decimal import ROUND_DOWN, Decimal

import pytest
import redis
from celery import Celery
from django.core.management import call_command
from django.utils import timezone
from rest_framework.authtoken.models import Token
from web3 import Web3

from marketplace.chain import deploy, indexer
from marketplace.chain.client import w3
from marketplace.models import (
    Assignment,
    ChainContract,
    ChainTransaction,
    Escrow,
    Job,
    Organization,
    Settlement,
)
from marketplace.services import funding, payments
from marketplace.services.accounts import organization_create
from marketplace.services.nodes import NodeSpec, node_create
from marketplace.services.offers import OfferSpec, offer_create

from ..chain_node import dev_node
from ..factories import JobFactory, UserFactory
from ..stack import Stack, wait_for
from .support import assignment, committed, move, units

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]
REDIS_URL = os.environ.get("CHAIN_STACK_REDIS_URL", "redis://127.0.0.1:6379/8")  # db 7: the other stacks
S = Job.Status
MINT = Decimal("1000")
# A worker's log line for a settle_pending task that sent (or re-sent) a batch.
SETTLE_TASK = re.compile(r"settle_pending\[([0-9a-f-]+)\] (received|succeeded)")
SETTLE_SENT = re.compile(r"settle_pending\[[^\]]+\] succeeded in [\d.]+s: '(0x[0-9a-fA-F]{64})'")


@pytest.fixture(scope="module")
def node():
    with dev_node() as url:
        yield url


@pytest.fixture
def on_node(node, settings):
    """This process talks to the node too (deploying, checking balances)."""
    settings.CHAIN_RPC_URL = node
    settings.ESCROW_ENABLED = True
    settings.CHAIN_CONFIRMATIONS = 1
    return node


def stack_for(tmp_path, node: str, *, queues: str = "default,dispatch,verify,chain", **env: str) -> Stack:
    stack = Stack(tmp_path, redis_url=REDIS_URL, queues=queues)
    stack.env.update({"ESCROW_ENABLED": "1", "CHAIN_RPC_URL": node, "SETTLEMENT_INTERVAL_S": "2",
                      "CHAIN_RESEND_AFTER_S": "1", **env})
    return stack


def chain_deploy() -> str:
    out = io.StringIO()
    call_command("chain_deploy", "--dev-wallets", "--mint", str(MINT), stdout=out)
    assert "chain 31337" in out.getvalue(), out.getvalue()
    return out.getvalue()


def cpu_provider(price: str = "3.00"):
    provider = organization_create(name="Local CPU Lab", kind=Organization.Kind.PROVIDER)
    node, token = node_create(provider=provider, spec=NodeSpec(
        name="cpu-0", gpu_model="cpu", gpu_count=2, gpu_memory_gb=None, cpu_cores=2, ram_gb=8,
        disk_gb=20, region="EU-DE"))
    offer_create(provider=provider, node=node,
                 spec=OfferSpec(gpus_offered=2, price_per_gpu_hour=Decimal(price)))
    return provider, node, token


def consumer(name: str = "Medisight", username: str = "alice") -> tuple[Organization, str]:
    org = organization_create(name=name, kind=Organization.Kind.CONSUMER, sector="healthcare")
    user = UserFactory(username=username, organization=org)
    return org, Token.objects.create(user=user).key


def escrow_contract():
    return deploy.escrow_contract()


def owed(address: str) -> int:
    return escrow_contract().functions.owed(address).call()


def settled_events() -> list[str]:
    """The job keys of every JobSettled the escrow emitted (a job twice: paid twice)."""
    escrow = escrow_contract()
    since = ChainContract.objects.get(name="escrow").block_number
    logs = escrow.events.JobSettled().get_logs(from_block=since)
    return ["0x" + bytes(e["args"]["jobId"]).hex() for e in logs]


def assert_nonces_consecutive() -> None:
    for address in set(ChainTransaction.objects.values_list("sender", flat=True)):
        nonces = list(ChainTransaction.objects.filter(sender=address).order_by("nonce")
                      .values_list("nonce", flat=True))
        assert nonces == list(range(nonces[0], nonces[0] + len(nonces))), (address, nonces)
        assert w3().eth.get_transaction_count(address) == nonces[-1] + 1


def test_a_job_is_funded_trained_and_settled_through_the_api(on_node, tmp_path):
    org, token = consumer()
    provider, _node, node_token = cpu_provider()
    chain_deploy()
    wallet = org.wallets.get().address
    payout = provider.wallets.get(is_payout=True).address
    stack = stack_for(tmp_path, on_node).start()
    try:
        stack.agent("pay-agent", node_token)
        code, job = stack.http("POST", "/api/v1/jobs/", token=token, body={
            "name": "Paid run", "template": "tabular-classifier", "params": {"epochs": 3},
            "dataset": "sample:breast-cancer", "nodes": 1, "gpus_per_node": 2, "gpu_models": ["cpu"],
            "max_price_per_gpu_hour": "5.00", "budget": "10.00",
            "deadline": (timezone.now() + timedelta(days=1)).isoformat()})
        assert code == 201 and job["status"] == "submitted", job
        code, funded = stack.http("POST", f"/api/v1/jobs/{job['id']}/fund/", token=token,
                                  body={"amount": "10"})
        assert code == 200 and funded["escrow"]["status"] == "funding", funded

        def settled():
            code, body = stack.http("GET", f"/api/v1/jobs/{job['id']}/", token=token)
            assert code == 200, body
            assert body["status"] not in ("failed", "cancelled", "refunded"), body["timeline"][-3:]
            return body if body["status"] == "settled" else None

        done = wait_for(settled, timeout=240, what="the job to be settled")
    finally:
        stack.stop()

    reasons = [e["reason"] for e in done["timeline"]]
    for step in ("funding_sent", "escrow_funded", "matching", "started", "training_finished",
                 "escrow_settled"):
        assert step in reasons, reasons
    assert reasons.index("escrow_funded") < reasons.index("matching") < reasons.index("escrow_settled")
    s = Settlement.objects.get(job_id=job["id"])
    (p,) = s.payouts.all()
    assert s.status == "settled" and s.charged > 0 and p.address == payout
    assert p.amount + s.fee == s.charged and s.charged + s.refunded == Decimal("10")
    assert p.amount == (s.charged * Decimal("0.95")).quantize(Decimal("0.000001"), rounding=ROUND_DOWN)
    statement = done["escrow"]["statement"]
    assert statement["status"] == "settled" and statement["payouts"][0]["amount"] == str(p.amount)
    # On the chain: the provider and the treasury are owed exactly their share, the consumer
    # is owed the rest, and its wallet paid the budget once.
    assert owed(payout) == units(p.amount)
    assert owed(deploy.treasury_address()) == units(s.fee)
    assert owed(wallet) == units(s.refunded)
    assert deploy.token_contract().functions.balanceOf(wallet).call() == units(MINT - 10)
    assert settled_events() == [Escrow.objects.get(job_id=job["id"]).key]
    assert_nonces_consecutive()


def funded_completed_jobs(org, node, count: int) -> list[Job]:
    """Funded from the custodial wallet and indexed, then run and completed."""
    jobs = []
    for _ in range(count):
        job = JobFactory(owner=org, status=S.SUBMITTED, budget=Decimal("5"))
        with committed():
            funding.job_fund(job=job)
        jobs.append(job)
    indexer.index_events()
    for job in jobs:
        assignment(job, node, minutes=20, price="1.50")
        move(job, S.MATCHING, S.RUNNING, S.VERIFYING, S.COMPLETED)
    return jobs


def test_a_worker_killed_during_settlement_leaves_every_job_settled_once(on_node, tmp_path):
    org, _ = consumer()
    provider, node, _ = cpu_provider()
    chain_deploy()
    jobs = funded_completed_jobs(org, node, 5)
    assert payments.settlements_prepare() == 5
    redis.Redis.from_url(REDIS_URL).flushdb()
    stack = stack_for(tmp_path, on_node, queues="chain", SETTLEMENT_INTERVAL_S="1")
    try:
        stack.worker("pay-worker-a")

        def batch_stored():
            return ChainTransaction.objects.filter(purpose="settle").first()

        wait_for(batch_stored, timeout=90, every=0.01, what="worker A to store the batch")
        stack.kill("pay-worker-a")
        tx = ChainTransaction.objects.get(purpose="settle")
        at_kill = (tx.status, Settlement.objects.filter(status="settled").count())
        stack.worker("pay-worker-b")

        def finished():  # the jobs settled (indexer), the batch seen confirmed (chain_sync)
            return (Job.objects.filter(pk__in=[j.pk for j in jobs], status=S.SETTLED).count() == 5
                    and ChainTransaction.objects.filter(purpose="settle", status="confirmed").exists())

        wait_for(finished, timeout=90, what=f"worker B to finish (worker A was killed at {at_kill})")
    finally:
        stack.stop()

    assert ChainTransaction.objects.filter(purpose="settle").count() == 1  # re-sent, never re-made
    assert ChainTransaction.objects.get(purpose="settle").status == "confirmed"
    assert sorted(settled_events()) == sorted(j.escrow.key for j in jobs)
    payout = provider.wallets.get(is_payout=True).address
    total = sum((p.amount for s in Settlement.objects.all() for p in s.payouts.all()), Decimal(0))
    assert owed(payout) == units(total) == 5 * units("0.475")  # 20 min at 1.50, less 5 %
    assert_nonces_consecutive()


def test_two_hundred_settlements_from_two_workers(on_node, tmp_path):
    count, batch = 200, 10
    org, _ = consumer()
    provider, node, _ = cpu_provider()
    chain_deploy()
    payer = w3().eth.accounts[7]  # a browser wallet, unlocked on the node
    deploy.mint_to(payer, Decimal(count))
    escrow, token = escrow_contract(), deploy.token_contract()
    send = {"from": payer, "gas": 200_000}
    token.functions.approve(escrow.address, units(count)).transact(send)
    deadline = int((timezone.now() + timedelta(days=30)).timestamp())
    started = timezone.now() - timedelta(hours=1)
    offer = node.offers.get()

    jobs = Job.objects.bulk_create([JobFactory.build(owner=org, status=S.COMPLETED, budget=Decimal("1"))
                                    for _ in range(count)])
    escrows = Escrow.objects.bulk_create([
        Escrow(job=job, key="0x" + secrets.token_hex(32), status=Escrow.Status.FUNDED, amount=Decimal("1"),
               consumer_address=payer, funded_at=started) for job in jobs])
    Assignment.objects.bulk_create([
        Assignment(job=job, node=node, offer=offer, attempt=1, node_rank=0, gpus=1,
                   price_per_gpu_hour=Decimal("1.20"), status=Assignment.Status.SUCCEEDED,
                   started_at=started, finished_at=started + timedelta(minutes=10)) for job in jobs])
    for e in escrows:  # each on terms the operator signed for the payer
        signature = deploy.fund_terms_signature(job_key=e.key, consumer=payer, amount=units(1),
                                                deadline=deadline)
        escrow.functions.fund(bytes.fromhex(e.key[2:]), units(1), deadline,
                              bytes.fromhex(signature[2:])).transact(send)
    assert escrow.functions.escrows(bytes.fromhex(escrows[-1].key[2:])).call()[3] == 1
    assert payments.settlements_prepare() == count

    redis.Redis.from_url(REDIS_URL).flushdb()
    stack = stack_for(tmp_path, on_node, queues="chain", SETTLEMENT_BATCH_MAX=str(batch))
    try:
        workers = ("pay-worker-1", "pay-worker-2")
        for name in workers:
            stack.worker(name, beat=False)
        # Both consume before the first task is sent, so that neither gets the work alone.
        for name in workers:
            wait_for(lambda name=name: " ready." in (stack.logs / f"{name}.log").read_text(),
                     timeout=60, what=f"{name} to be ready")

        # The stack's broker, whatever this test process's own Celery settings say.
        beat = Celery(broker=REDIS_URL, set_as_current=False)

        def all_settled():
            left = Settlement.objects.exclude(status="settled").count()
            if left:
                for _ in range(4):  # what beat would send: enough for both workers' processes
                    beat.send_task("workers.tasks_chain.settle_pending", queue="chain")
            return left == 0

        wait_for(all_settled, timeout=120, every=1.0, what="200 settlements")

        def drained():  # the tasks sent meanwhile ran to the end, each worker's log says so
            if redis.Redis.from_url(REDIS_URL).llen("chain"):
                return False
            for name in workers:
                events = SETTLE_TASK.findall((stack.logs / f"{name}.log").read_text())
                if {i for i, e in events if e == "received"} - {i for i, e in events if e == "succeeded"}:
                    return False
            return True

        # Stopping a worker amid a task loses it (WorkerLostError in its log) and the log
        # line that names the batch it sent: wait for both before stopping.
        wait_for(drained, timeout=120, what="the workers to finish the tasks they took")
    finally:
        stack.stop()

    batches = ChainTransaction.objects.filter(purpose="settle")
    assert batches.count() >= count // batch
    # Each worker's share, from its own log (Celery logs each task's result: the batch's
    # transaction hash): both sent batches, and together they sent every one.
    sent = {name: set(SETTLE_SENT.findall((stack.logs / f"{name}.log").read_text())) for name in workers}
    assert set().union(*sent.values()) == set(batches.values_list("tx_hash", flat=True)), sent
    shares = {name: Settlement.objects.filter(transaction__tx_hash__in=hashes).count()
              for name, hashes in sent.items()}
    assert all(shares.values()) and Settlement.objects.filter(
        transaction__tx_hash__in=set().union(*sent.values())).count() == count, shares
    assert set(batches.values_list("status", flat=True)) == {"confirmed"}
    assert not ChainTransaction.objects.exclude(status="confirmed").exists()
    assert_nonces_consecutive()
    keys = settled_events()
    assert len(keys) == count and set(keys) == {e.key for e in escrows}
    assert Job.objects.filter(pk__in=[j.pk for j in jobs], status=S.SETTLED).count() == count
    assert Settlement.objects.filter(transaction__isnull=True).count() == 0
    payout = provider.wallets.get(is_payout=True).address
    assert owed(payout) == count * units("0.19")  # 10 min at 1.20 = 0.20, less 5 %
    assert owed(deploy.treasury_address()) == count * units("0.01")
    assert owed(Web3.to_checksum_address(payer)) == count * units("0.80")
    assert not escrow.events.SettlementSkipped().get_logs(
        from_block=ChainContract.objects.get(name="escrow").block_number)
