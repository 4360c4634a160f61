"""A cheat, end to end and on chain: a staked provider that skips updates trains a funded
job; the verifier catches it, the provider is slashed on chain to the treasury, the job runs
again on an honest provider, and the settlement pays the honest work only. Real parts: the
hardhat JSON-RPC node, daphne, a Celery worker on every queue (the chain sender among
them), real agents and torch.distributed."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace.chain import deploy, sender
from marketplace.models import ChainContract, Dispute, Escrow, Job, Organization, Settlement
from marketplace.services import staking
from marketplace.services.accounts import organization_create
from marketplace.services.nodes import NodeSpec, node_create
from marketplace.services.offers import OfferSpec, offer_create

from ..stack import wait_for
from . import test_chain_integration as ci
from .support import committed, units
from .test_chain_integration import chain_deploy, consumer, owed, settled_events, stack_for

node, on_node = ci.node, ci.on_node  # the hardhat node and this process on it (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def provider(name: str, price: str):
    org = organization_create(name=name, kind=Organization.Kind.PROVIDER)
    node_row, token = node_create(provider=org, spec=NodeSpec(
        name=f"{name.split()[0].lower()}-cpu", gpu_model="cpu", gpu_count=2, gpu_memory_gb=None,
        cpu_cores=2, ram_gb=8, disk_gb=20, region="EU-DE"))
    offer_create(provider=org, node=node_row,
                 spec=OfferSpec(gpus_offered=2, price_per_gpu_hour=Decimal(price)))
    return org, node_row, token


def slashed_events() -> list[dict]:
    stake = deploy.stake_contract()
    since = ChainContract.objects.get(name="stake").block_number
    return [dict(e["args"]) for e in stake.events.Slashed().get_logs(from_block=since)]


def test_a_cheat_is_slashed_on_chain_not_paid_and_the_job_settles_on_honest_work(on_node, tmp_path):
    org, token = consumer()
    cheat, cheat_node, cheat_token = provider("Cheap Cycles", "2.00")
    honest, honest_node, honest_token = provider("Honest Compute", "3.00")
    chain_deploy()
    with committed():
        op = staking.stake_deposit(organization=cheat, amount="50")
    sender.wait(op.transaction)
    stack = stack_for(tmp_path, on_node).start()

    def job_now(job_id):
        code, body = stack.http("GET", f"/api/v1/jobs/{job_id}/", token=token)
        assert code == 200, body
        return body

    try:
        stack.agent("cheat-agent", cheat_token, faults="skip_steps=0.1")
        code, job = stack.http("POST", "/api/v1/jobs/", token=token, body={
            "name": "Audited run", "template": "tabular-classifier",
            "params": {"epochs": 8, "batch_size": 8, "hidden_units": 32},
            "dataset": "sample:breast-cancer", "nodes": 1, "gpus_per_node": 2, "gpu_models": ["cpu"],
            "max_price_per_gpu_hour": "5.00", "budget": "10.00",
            "deadline": (timezone.now() + timedelta(days=1)).isoformat()})
        assert code == 201, job
        code, funded = stack.http("POST", f"/api/v1/jobs/{job['id']}/fund/", token=token, body={})
        assert code == 200, funded
        wait_for(lambda: any(e["reason"] == "verification_failed" for e in job_now(job["id"])["timeline"]),
                 timeout=240, what="the cheat's work to fail verification")
        dispute = Dispute.objects.get(job_id=job["id"])
        wait_for(lambda: Dispute.objects.get(pk=dispute.pk).status == "slashed", timeout=120,
                 what="the chain worker to slash the cheat")
        stack.agent("honest-agent", honest_token)
        done = wait_for(lambda: (lambda b: b if b["status"] == "settled" else None)(job_now(job["id"])),
                        timeout=300, what="the job to complete elsewhere and be settled")
    finally:
        stack.stop()

    record = Job.objects.get(pk=job["id"])
    cheat_part, honest_part = record.assignments.order_by("attempt")
    assert (cheat_part.node_id, honest_part.node_id) == (cheat_node.pk, honest_node.pk)
    assert cheat_node.pk in record.excluded_nodes
    # Slashed once, on chain, to the treasury (never to an address the consumer controls:
    # issue 12, item 5), by the dispute's amount.
    dispute.refresh_from_db()
    assert dispute.reason == "replay_mismatch" and dispute.slash_amount > 0
    (event,) = slashed_events()
    consumer_address = Escrow.objects.get(job=record).consumer_address
    assert event["recipient"] == deploy.treasury_address() != consumer_address
    assert event["amount"] == units(dispute.slash_amount)
    assert staking_left(cheat) == units("50") - units(dispute.slash_amount)
    # Paid: the honest work only, once; the cheat is owed nothing.
    s = Settlement.objects.get(job=record)
    assert [p.address for p in s.payouts.all()] == [honest.wallets.get(is_payout=True).address]
    assert owed(cheat.wallets.get(is_payout=True).address) == 0
    assert s.charged > 0 and s.charged + s.refunded == Decimal("10")
    assert settled_events() == [Escrow.objects.get(job=record).key]
    reasons = [e["reason"] for e in done["timeline"]]
    assert reasons.index("verification_failed") < reasons.index("verification_passed") < \
        reasons.index("escrow_settled")


def staking_left(org) -> int:
    """The provider's active stake on chain, in base units."""
    address = org.wallets.get(is_payout=True).address
    staked, pending, _ = deploy.stake_contract().functions.stakes(address).call()
    return staked + pending
