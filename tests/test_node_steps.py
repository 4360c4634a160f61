"""Each node's own training step, from its agent's heartbeats (`steps`), validated at the
platform's boundary, stored on its assignment with the time it was first seen, and shown in
the job's API and on its page."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from marketplace.models import Assignment, Job
from marketplace.services import execution

from .factories import JobFactory

pytestmark = pytest.mark.django_db
S, A = Job.Status, Assignment.Status


@pytest.fixture
def running(carol_node, carol_offer, healthcare):
    job = JobFactory(owner=healthcare, status=S.RUNNING, attempt=1, nodes=1)
    return Assignment.objects.create(
        job=job, node=carol_node, offer=carol_offer, attempt=1, node_rank=0, gpus=1,
        price_per_gpu_hour=Decimal("1.50"), status=A.RUNNING, started_at=timezone.now())


def beat(node, assignment, steps):
    return execution.agent_heartbeat(node=node, running=[assignment.pk], unacked=[], steps=steps)


def test_a_heartbeat_stores_the_nodes_own_step_and_when_it_moved_on(running, carol_node):
    beat(carol_node, running, {str(running.pk): 120})
    running.refresh_from_db()
    assert running.last_step == 120 and running.last_step_at is not None
    first_seen = running.last_step_at
    Assignment.objects.filter(pk=running.pk).update(last_step_at=first_seen - timedelta(minutes=5))
    beat(carol_node, running, {str(running.pk): 120})  # the same step: since when, unchanged
    running.refresh_from_db()
    assert running.last_step_at == first_seen - timedelta(minutes=5)
    beat(carol_node, running, {str(running.pk): 121})
    running.refresh_from_db()
    assert running.last_step == 121 and running.last_step_at > first_seen - timedelta(minutes=5)


@pytest.mark.parametrize("steps", [
    "120", [120], None,  # not an object
    {"x": 5}, {"-1": 5}, {"1e3": 5}, {str(2**70): 5},  # not an assignment id
    "mine:-1", "mine:True", "mine:1.5", "mine:'5'", f"mine:{2**31}",  # not a step
])
def test_steps_that_are_not_a_decimal_id_and_a_step_in_range_are_ignored(running, carol_node, steps):
    if isinstance(steps, str) and steps.startswith("mine:"):
        steps = {str(running.pk): eval(steps.removeprefix("mine:"))}  # noqa: S307 (literals above)
    beat(carol_node, running, steps)  # no error: the heartbeat still does its work
    running.refresh_from_db()
    assert running.last_step is None and running.status == A.RUNNING


def test_only_the_nodes_own_active_assignments_take_a_step(running, carol_node, dave_node):
    beat(dave_node, running, {str(running.pk): 50})  # another node cannot write carol's
    Assignment.objects.filter(pk=running.pk).update(status=A.SUCCEEDED)
    beat(carol_node, running, {str(running.pk): 60})  # nor carol's agent once it ended
    running.refresh_from_db()
    assert running.last_step is None


def test_the_api_and_the_page_show_each_nodes_step(running, carol_node, alice, api, client):
    execution.agent_hello(node=carol_node, hello={"running": [running.pk], "unacked": [], "faults": {},
                                                   "steps": {str(running.pk): 77}})
    body = api.as_user(alice).get(f"/api/v1/jobs/{running.job_id}/").json()
    (part,) = body["assignments"]
    assert part["last_step"] == 77 and part["last_step_at"]
    client.force_login(alice)
    html = client.get(reverse("job_detail", args=[running.job_id])).content.decode()
    assert 'data-testid="node-step">77<' in html
