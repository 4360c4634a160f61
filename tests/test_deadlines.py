"""Deadlines enforced (issue 12, item 9), without the chain: the state changes, the
timeline, the refusal to place and the quote's reason. The settlement on the chain:
tests/payments/test_deadlines.py."""

import secrets
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import TestCase
from django.utils import timezone

from marketplace.models import Assignment, Escrow, Job
from marketplace.services import agent_ingest, budget, execution, placement

from .factories import JobFactory
from .payments.support import checkpoint, offer_on

pytestmark = pytest.mark.django_db
S, A = Job.Status, Assignment.Status


def test_a_running_job_at_its_deadline_checkpoints_stops_and_ends(healthcare, carol_node):
    job = JobFactory(owner=healthcare, status=S.RUNNING, attempt=1, max_price_per_gpu_hour=Decimal("1.20"),
                     deadline=timezone.now() + timedelta(seconds=5))  # within the pause lead time
    a = Assignment.objects.create(job=job, node=carol_node, offer=offer_on(carol_node), attempt=1,
                                  node_rank=0, gpus=1, price_per_gpu_hour=Decimal("1.20"), status=A.RUNNING,
                                  started_at=timezone.now() - timedelta(minutes=30))
    with TestCase.captureOnCommitCallbacks(execute=False) as pushed:
        assert budget.budget_watch()["pausing"] == 1
    assert pushed  # assignment.pause to the node, after commit
    # The agent's heartbeat repeats it until the part stops.
    assert any(m["type"] == "assignment.pause"
               for m in execution.agent_heartbeat(node=carol_node, running=[a.pk], unacked=[]))
    checkpoint(a, after_minutes=29.9, step=240)
    agent_ingest.agent_data(node=carol_node, message={"type": "assignment.finished", "assignment": a.pk,
                                                   "seq": 1, "status": "paused", "step": 240})
    job.refresh_from_db()
    assert job.status == S.CANCELLED and job.current_step == 240
    assert [e.reason for e in job.events.order_by("id")][-2:] == ["deadline_stopping", "deadline_reached"]


def test_a_budget_pause_long_before_the_deadline_still_pauses(healthcare, carol_node):
    job = JobFactory(owner=healthcare, status=S.RUNNING, attempt=1, budget=Decimal("10"),
                     deadline=timezone.now() + timedelta(days=2))
    a = Assignment.objects.create(job=job, node=carol_node, offer=offer_on(carol_node), attempt=1,
                                  node_rank=0, gpus=1, price_per_gpu_hour=Decimal("36"), status=A.RUNNING,
                                  started_at=timezone.now() - timedelta(minutes=16.6))
    assert budget.budget_watch()["pausing"] == 1
    agent_ingest.agent_data(node=carol_node, message={"type": "assignment.finished", "assignment": a.pk,
                                                   "seq": 1, "status": "paused", "step": 0})
    job.refresh_from_db()
    assert job.status == S.PAUSED


@pytest.mark.parametrize("status", [S.MATCHING, S.INTERRUPTED, S.PAUSED, S.FUNDED])
def test_a_job_not_running_past_its_deadline_is_cancelled_once(healthcare, status):
    job = JobFactory(owner=healthcare, status=status, deadline=timezone.now() - timedelta(seconds=1))
    assert budget.budget_watch()["expired"] == 1
    job.refresh_from_db()
    assert job.status == S.CANCELLED
    assert "had to stop by" in job.events.get(reason="deadline_reached").message
    assert budget.budget_watch()["expired"] == 0


def test_a_job_whose_escrow_deadline_is_too_near_is_not_placed_and_says_why(healthcare, carol_offer,
                                                                           settings):
    settings.ESCROW_ENABLED = True
    settings.DEADLINE_SETTLE_MARGIN_S = 600
    job = JobFactory(owner=healthcare, status=S.MATCHING, budget=Decimal("100"), gpus_per_node=1,
                     max_price_per_gpu_hour=Decimal("10"), duration_hours=Decimal("1"),
                     deadline=timezone.now() + timedelta(days=1))
    escrow = Escrow.objects.create(job=job, key="0x" + secrets.token_hex(32), status=Escrow.Status.FUNDED,
                                   amount=Decimal("100"), deadline=timezone.now() + timedelta(minutes=20))
    assert placement.job_place(job_id=job.pk) == []
    note = job.events.get(reason="no_match")
    assert note.data["reasons"][0]["code"] == "deadline" and "reclaim deadline" in note.message
    escrow.deadline = timezone.now() + timedelta(days=3)
    escrow.save(update_fields=["deadline"])
    assert len(placement.job_place(job_id=job.pk)) == 1


def test_the_quote_explains_a_deadline_that_leaves_too_little_time(api, alice, carol_offer, settings):
    settings.ESCROW_ENABLED = True
    settings.ESCROW_RECLAIM_AFTER_S = 60  # the escrow may be reclaimed a minute after the deadline
    settings.DEADLINE_SETTLE_MARGIN_S = 3600
    body = {"name": "late", "template": "tabular-classifier", "params": {}, "dataset": "sample:breast-cancer",
            "nodes": 1, "gpus_per_node": 1, "max_price_per_gpu_hour": "5", "budget": "50",
            "duration_hours": "1", "deadline": (timezone.now() + timedelta(hours=1, minutes=30)).isoformat()}
    quote = api.as_user(alice).post("/api/v1/jobs/quote/", body, format="json").json()
    assert quote["feasible"] is False
    reason = quote["reasons"][0]
    assert reason["code"] == "deadline" and "Move the deadline later" in reason["message"]
    body["deadline"] = (timezone.now() + timedelta(hours=3)).isoformat()
    assert api.as_user(alice).post("/api/v1/jobs/quote/", body, format="json").json()["feasible"] is True
