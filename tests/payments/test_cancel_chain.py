"""Cancellation against the real platform and a real JSON-RPC node (hardhat): a running,
funded job cancelled by its owner stops on its node, is settled once for the work done at
the locked price, and the rest of the escrow goes back to the consumer; a retried cancel
changes nothing, and another tenant's cancel is refused."""

from __future__ import annotations

from decimal import Decimal

import pytest

from marketplace.chain import deploy
from marketplace.models import Assignment, Escrow, Job, Settlement
from marketplace.selectors import metering

from ..stack import wait_for
from .support import units
from .test_chain_integration import (  # noqa: F401  (node, on_node: fixtures)
    chain_deploy,
    consumer,
    cpu_provider,
    node,
    on_node,
    owed,
    settled_events,
    stack_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def test_a_running_job_cancelled_twice_stops_and_settles_the_work_done_once(on_node, tmp_path):  # noqa: F811
    org, alice = consumer()
    _, bob = consumer("GridCast", "bob")
    provider, _node, node_token = cpu_provider(price="3.00")
    chain_deploy()
    wallet = org.wallets.get().address
    payout = provider.wallets.get(is_payout=True).address
    stack = stack_for(tmp_path, on_node).start()
    try:
        stack.agent("cancel-agent", node_token)
        code, job = stack.http("POST", "/api/v1/jobs/", token=alice, body={
            "name": "Long run", "template": "image-classifier", "dataset": "sample:digits",
            "params": {"epochs": 200, "batch_size": 32}, "nodes": 1, "gpus_per_node": 2,
            "gpu_models": ["cpu"], "max_price_per_gpu_hour": "5.00", "budget": "10.00",
            "deadline": "2030-01-01T00:00:00Z"})
        assert code == 201, job
        job_id = job["id"]
        assert stack.http("POST", f"/api/v1/jobs/{job_id}/fund/", token=alice, body={})[0] == 200
        record = Job.objects.get(pk=job_id)
        wait_for(lambda: record.metrics.filter(step__gte=20).exists(), timeout=150,
                 what="the job to be training")
        assert stack.http("POST", f"/api/v1/jobs/{job_id}/cancel/", token=bob)[0] == 404
        code, first = stack.http("POST", f"/api/v1/jobs/{job_id}/cancel/", token=alice)
        assert code == 200 and first["status"] == "cancelled", first
        code, again = stack.http("POST", f"/api/v1/jobs/{job_id}/cancel/", token=alice)
        assert code == 200 and again["status"] in ("cancelled", "settled")

        # The node stops: the agent kills the ranks and says so; no progress arrives after that.
        log = stack.logs / "cancel-agent.log"
        wait_for(lambda: "stopped: job cancelled by alice" in log.read_text(), timeout=30,
                 what="the agent to stop the assignment")
        last_seq = Job.objects.get(pk=job_id).metric_seq

        def settled():
            code, body = stack.http("GET", f"/api/v1/jobs/{job_id}/", token=alice)
            assert code == 200, body
            return body if body["status"] == "settled" else None

        done = wait_for(settled, timeout=90, what="the cancelled job to be settled")
        assert Job.objects.get(pk=job_id).metric_seq == last_seq
    finally:
        stack.stop()

    (a,) = Assignment.objects.filter(job_id=job_id)
    assert a.status == Assignment.Status.CANCELLED and a.finished_at is not None
    # The work done, at the locked price: 2 CPU slots × 3.00 tUSD/h for as long as it ran.
    seconds = Decimal((a.finished_at - a.started_at).total_seconds())
    s = Settlement.objects.get(job_id=job_id)
    assert s.charged == metering.job_statement(a.job)[1]
    assert abs(s.charged - Decimal("6") * seconds / 3600) < Decimal("0.00001")
    assert s.charged > 0 and s.refunded == Decimal("10") - s.charged
    (p,) = s.payouts.all()
    assert owed(payout) == units(p.amount) and owed(wallet) == units(s.refunded)
    assert owed(deploy.treasury_address()) == units(s.fee)
    assert settled_events() == [Escrow.objects.get(job_id=job_id).key]  # once
    reasons = [e["reason"] for e in done["timeline"]]
    assert reasons.count("cancelled_by_owner") == 1 and reasons.count("escrow_settled") == 1
    assert "assignments_stopped" in reasons
