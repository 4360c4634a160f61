"""Deadlines enforced (issue 12, item 9), on the in-process chain. A running job that
reaches its deadline checkpoints, stops and ends with the reason on its timeline, and its
work up to the checkpoint settles once; a job waiting for machines past its deadline ends
and is refunded; a job whose escrow's reclaim deadline leaves too little time for its
budget is not placed, and says why. Before, none of these deadlines was looked at: the
job kept running past the moment its consumer could reclaim the deposit."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace.chain import indexer
from marketplace.models import Assignment, ChainTransaction, Escrow, Job, Settlement
from marketplace.services import agent_ingest, budget, payments, placement

from .support import checkpoint, committed, funded_job, move, offer_on

pytestmark = pytest.mark.django_db
S = Job.Status
A = Assignment.Status
SETTLED, REFUNDED = 2, 3  # JobEscrow.State


def _settle_passes(n: int = 2) -> None:
    for _ in range(n):  # a retried pass pays nothing twice
        payments.settlements_prepare()
        with committed():
            payments.settlement_batch_send()
        indexer.index_events()


def test_a_running_job_past_its_deadline_checkpoints_stops_and_settles_once(wallets, healthcare, carol_node):
    job = funded_job(healthcare, budget="100")
    move(job, S.MATCHING, S.RUNNING)
    Job.objects.filter(pk=job.pk).update(attempt=1, max_price_per_gpu_hour=Decimal("1.20"))
    a = Assignment.objects.create(job=job, node=carol_node, offer=offer_on(carol_node), attempt=1,
                                  node_rank=0, gpus=1, price_per_gpu_hour=Decimal("1.20"), status=A.RUNNING,
                                  started_at=timezone.now() - timedelta(minutes=30))
    Job.objects.filter(pk=job.pk).update(deadline=timezone.now() - timedelta(seconds=1))  # it passed

    with committed():
        assert budget.budget_watch()["pausing"] == 1  # the nodes are told to checkpoint and stop
    job.refresh_from_db()
    assert job.status == S.RUNNING and job.pause_requested_at is not None
    assert "must stop by" in job.events.get(reason="deadline_stopping").message
    assert budget.budget_watch()["pausing"] == 0  # asked once
    # The agent checkpoints at step 240 and reports its part paused (the real ingest path).
    checkpoint(a, after_minutes=29.9, step=240)
    agent_ingest.agent_data(node=carol_node, message={"type": "assignment.finished", "assignment": a.pk,
                                                   "seq": 1, "status": "paused", "step": 240})

    job.refresh_from_db()
    assert job.status == S.CANCELLED and job.current_step == 240
    ended = job.events.get(reason="deadline_reached")
    assert ended.to_status == S.CANCELLED and "had to stop by" in ended.message
    _settle_passes()
    job.refresh_from_db()
    assert job.status == S.SETTLED
    assert Settlement.objects.filter(job=job).count() == 1
    assert ChainTransaction.objects.filter(purpose="settle").count() == 1
    assert wallets.escrow_of(job.escrow.key)[3] == SETTLED
    payout = carol_node.provider.wallets.get(is_payout=True).address
    assert wallets.owed(payout) > 0  # about 30 min at 1.20/h, less the fee
    assert abs(job.settlement.charged - Decimal("0.6")) < Decimal("0.01")  # 30 min at 1.20/h


def test_a_job_waiting_for_machines_past_its_deadline_ends_and_is_refunded(wallets, healthcare):
    job = funded_job(healthcare, budget="50")
    move(job, S.MATCHING)
    Job.objects.filter(pk=job.pk).update(deadline=timezone.now() - timedelta(seconds=1))

    assert budget.budget_watch()["expired"] == 1
    job.refresh_from_db()
    assert job.status == S.CANCELLED and job.events.get(reason="deadline_reached").to_status == S.CANCELLED
    assert budget.budget_watch()["expired"] == 0
    _settle_passes()
    job.refresh_from_db()
    assert job.status in (S.REFUNDED, S.SETTLED)
    assert wallets.escrow_of(job.escrow.key)[3] in (SETTLED, REFUNDED)
    assert job.settlement.charged == 0 and job.settlement.refunded == Decimal("50")


def test_a_job_whose_escrow_deadline_leaves_too_little_time_is_not_placed(wallets, healthcare, carol_offer,
                                                                         settings):
    settings.DEADLINE_SETTLE_MARGIN_S = 600
    job = funded_job(healthcare, budget="100", max_price_per_gpu_hour=Decimal("10"), gpus_per_node=1,
                     duration_hours=Decimal("1"))
    # The escrow on chain can be reclaimed in 20 minutes: less the settlement margin, 10 minutes
    # to run, where the budget buys 10 h and the job expects 1 h.
    Escrow.objects.filter(job=job).update(deadline=timezone.now() + timedelta(minutes=20))
    move(job, S.MATCHING)

    assert placement.job_place(job_id=job.pk) == []
    note = job.events.filter(reason="no_match").last()
    assert note is not None and "must stop by" in note.message and "reclaim deadline" in note.message
    assert note.data["reasons"][0]["code"] == "deadline"
    # With time enough it is placed.
    Escrow.objects.filter(job=job).update(deadline=timezone.now() + timedelta(days=2))
    assert len(placement.job_place(job_id=job.pk)) == 1
