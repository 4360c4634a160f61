"""A machine that reboots within the heartbeat timeout never goes silent: its agent comes
back saying it runs nothing. The work it had accepted is then written off at once and the
job resumes elsewhere; work it still has messages on the way about is left alone."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace.models import Assignment, Job
from marketplace.services import execution

from .factories import JobFactory

pytestmark = pytest.mark.django_db
S, A = Job.Status, Assignment.Status


@pytest.fixture
def accepted(carol_node, carol_offer):
    """A job running on carol's node: its one assignment accepted, a GPU reserved."""
    carol_offer.gpus_reserved = 1
    carol_offer.save(update_fields=["gpus_reserved"])
    job = JobFactory(status=S.RUNNING, attempt=1)
    return Assignment.objects.create(
        job=job, node=carol_node, offer=carol_offer, attempt=1, node_rank=0, gpus=1,
        price_per_gpu_hour=Decimal("1.50"), status=A.ACCEPTED,
        started_at=timezone.now() - timedelta(minutes=5))


def test_an_agent_back_without_its_work_loses_it_and_the_job_resumes_elsewhere(accepted, carol_node):
    execution.agent_heartbeat(node=carol_node, running=[], unacked=[])
    accepted.refresh_from_db()
    job = accepted.job
    job.refresh_from_db()
    assert accepted.status == A.LOST and "restarted" in accepted.detail
    assert job.status == S.INTERRUPTED and carol_node.pk in job.excluded_nodes
    event = job.events.get(reason="node_lost")
    assert "its agent restarted without it" in event.message
    assert carol_node.offers.get().gpus_reserved == 0


def test_the_hello_of_a_restarted_agent_is_enough(accepted, carol_node):
    execution.agent_hello(node=carol_node, hello={"running": [], "unacked": [], "faults": {}})
    accepted.refresh_from_db()
    assert accepted.status == A.LOST


@pytest.mark.parametrize("said", [
    {"running": "mine", "unacked": []},      # still training it
    {"running": [], "unacked": "mine"},      # finished: its result is on the way
    {"running": [], "unacked": None},        # an agent that does not say: the timeout decides
])
def test_work_the_agent_runs_or_still_reports_on_is_left_alone(accepted, carol_node, said):
    mine = [accepted.pk]
    execution.agent_heartbeat(node=carol_node, running=mine if said["running"] == "mine" else [],
                              unacked=mine if said["unacked"] == "mine" else said["unacked"])
    accepted.refresh_from_db()
    assert accepted.status == A.ACCEPTED
    assert Job.objects.get(pk=accepted.job_id).status == S.RUNNING


def test_the_agent_reports_what_its_outbox_still_holds(tmp_path):
    from workers.agent.outbox import Outbox

    box = Outbox(tmp_path / "outbox.sqlite3")
    box.put_numbered(7, {"id": "a", "type": "progress"})
    box.put_numbered(3, {"id": "b", "type": "log"})
    assert box.assignments() == [3, 7]
    box.ack("a")
    assert box.assignments() == [3]
    box.close()


def test_a_message_that_cannot_be_kept_takes_no_sequence_number(tmp_path):
    from workers.agent.outbox import Outbox

    box = Outbox(tmp_path / "outbox.sqlite3")
    first = box.put_numbered(7, {"id": "a", "type": "progress"})
    with pytest.raises(TypeError):  # fails after numbering, before storing: nothing of it stays
        box.put_numbered(7, {"id": "b", "type": "log", "lines": object()})
    box.close()
    box = Outbox(tmp_path / "outbox.sqlite3")  # as after a restart
    second = box.put_numbered(7, {"id": "c", "type": "log"})
    assert (first["seq"], second["seq"]) == (1, 2)
    assert [(m["id"], m["assignment"], m["seq"]) for m in box.pending()] == [("a", 7, 1), ("c", 7, 2)]
    box.close()
