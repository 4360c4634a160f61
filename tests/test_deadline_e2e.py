"""Deadlines through the real platform (issue 12, item 9): daphne, a Celery worker with beat
(budget_watch every second), an agent process and gloo ranks. A running job that reaches its
deadline checkpoints at one step, its node stops, and the job ends `cancelled` with reason
`deadline_reached` on its timeline, its checkpoint committed: before, the deadline was never
looked at and the job trained on. (Its settlement on the chain: tests/payments/test_deadlines.py.)"""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token

from marketplace.models import Assignment, Job, Organization
from marketplace.services.accounts import organization_create

from .factories import UserFactory
from .stack import Stack, wait_for
from .test_budget_e2e import TrainingHeld
from .test_execution_e2e import cpu_nodes, job_body, wait_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    s.env.update({"BUDGET_CHECK_INTERVAL_S": "1", "BUDGET_PAUSE_LEAD_S": "2", "BUDGET_PAUSE_GRACE_S": "90"})
    s.start()
    yield s
    s.stop()


def test_a_running_job_that_reaches_its_deadline_checkpoints_stops_and_ends(stack):
    org = organization_create(name="Medisight", kind=Organization.Kind.CONSUMER, sector="healthcare")
    alice = Token.objects.create(user=UserFactory(username="alice", organization=org)).key
    (node_token,) = cpu_nodes(1, price="1")
    agent = stack.agent("deadline-agent", node_token)
    with TrainingHeld(agent, stack.tmp / "deadline-agent") as held:
        code, job = stack.http("POST", "/api/v1/jobs/", token=alice, body=job_body(
            template="image-classifier", dataset="sample:digits", budget="50",
            params={"epochs": 40, "batch_size": 32, "checkpoint_every": 100}))
        assert code == 201, job
        job_id = job["id"]
        wait_status(stack, alice, job_id, {"running"}, timeout=150)
        # Its deadline comes: 3 s from now (the training is held, so it cannot finish first).
        Job.objects.filter(pk=job_id).update(deadline=timezone.now() + timedelta(seconds=3))
        wait_for(held.paused, timeout=60, what="the deadline's pause to reach the agent")
    assert held.frozen and not held.errors, (held.frozen, held.errors)
    ended = wait_status(stack, alice, job_id, {"cancelled"}, timeout=150)
    record = Job.objects.get(pk=job_id)
    reasons = [e["reason"] for e in ended["timeline"]]
    assert reasons.index("deadline_stopping") < reasons.index("deadline_reached")
    last = ended["timeline"][-1]
    assert last["reason"] == "deadline_reached" and last["to_status"] == "cancelled"
    assert f"Stopped at step {record.current_step}" in last["message"]
    part = record.assignments.get()
    assert part.status == Assignment.Status.PAUSED  # it checkpointed and stopped: not stopped by force
    ckpt = record.checkpoints.filter(committed_at__isnull=False).order_by("-step").first()
    assert ckpt is not None and ckpt.step == record.current_step >= 1
    assert record.current_step < record.total_steps
