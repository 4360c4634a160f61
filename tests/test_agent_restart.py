"""A machine that reboots within the heartbeat timeout never goes silent: its agent comes
back saying it runs nothing. The work it had accepted is then written off at once and the
job resumes elsewhere; work it still has messages on the way about is left alone."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace.models import Assignment, Job
from marketplace.services import agent_ingest, execution

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


# --- which node of a multi-node job is blamed -------------------------------------------
@pytest.fixture
def two_nodes(carol_node, carol_offer, dave_node, dave_offer):
    """A two-node DDP job running on carol's node (rank 0) and dave's (rank 1)."""
    job = JobFactory(status=S.RUNNING, attempt=1, nodes=2)
    parts = []
    for rank, (node, offer) in enumerate(((carol_node, carol_offer), (dave_node, dave_offer))):
        offer.gpus_reserved = 1
        offer.save(update_fields=["gpus_reserved"])
        parts.append(Assignment.objects.create(
            job=job, node=node, offer=offer, attempt=1, node_rank=rank, gpus=1,
            price_per_gpu_hour=Decimal("1.50"), status=A.RUNNING, started_at=timezone.now()))
    return job, parts


def failed(part: Assignment, error: str = "training exited with 1") -> None:
    """The part's agent reports that its ranks failed (the next message in its sequence)."""
    agent_ingest.agent_data(node=part.node, message={
        "type": "assignment.finished", "id": f"f{part.pk}", "assignment": part.pk,
        "seq": part.last_seq + 1, "status": "failed", "error": error})


def test_a_survivor_whose_peer_died_is_not_blamed_when_the_peer_comes_back_without_its_work(two_nodes):
    job, (host, survivor) = two_nodes
    failed(survivor)  # the host died: the survivor's collectives fail first
    job.refresh_from_db()
    assert job.status == S.RUNNING and job.excluded_nodes == []
    assert job.events.filter(reason="node_failed").exists()  # waiting to see who broke the group
    # The host's agent restarted (same token, same work folder) and runs nothing.
    execution.agent_hello(node=host.node, hello={"running": [], "unacked": [], "faults": {}})
    job.refresh_from_db()
    host.refresh_from_db()
    survivor.refresh_from_db()
    assert host.status == A.LOST and survivor.status == A.FAILED
    assert job.status == S.INTERRUPTED and job.excluded_nodes == [host.node_id]
    assert not execution.attempt_failure_settle(job_id=job.pk, attempt=1)  # the delayed check: done


def test_a_survivor_whose_peer_went_silent_is_not_blamed(two_nodes):
    job, (host, survivor) = two_nodes
    failed(survivor)
    execution.node_lost(node_id=host.node_id)  # the heartbeat watchdog
    job.refresh_from_db()
    assert job.status == S.INTERRUPTED and job.excluded_nodes == [host.node_id]


def test_without_a_lost_peer_the_first_node_that_failed_is_blamed(two_nodes):
    job, (host, other) = two_nodes
    failed(host, "RuntimeError: CUDA error: an illegal memory access was encountered")
    failed(other, "Connection closed by peer")  # every part ended: decided at once
    job.refresh_from_db()
    assert job.status == S.INTERRUPTED and job.excluded_nodes == [host.node_id]
    assert "illegal memory access" in job.events.get(reason="assignment_failed").message


def test_a_failed_part_is_blamed_when_its_peers_stay_alive(two_nodes):
    job, (host, other) = two_nodes
    failed(other)
    execution.agent_heartbeat(node=host.node, running=[host.pk], unacked=[])  # the host lives on
    assert execution.attempt_failure_settle(job_id=job.pk, attempt=1)
    job.refresh_from_db()
    host.refresh_from_db()
    assert job.status == S.INTERRUPTED and job.excluded_nodes == [other.node_id]
    assert host.status == A.CANCELLED


def test_a_single_node_failure_is_blamed_at_once(accepted, carol_node):
    failed(accepted)
    job = Job.objects.get(pk=accepted.job_id)
    assert job.status == S.INTERRUPTED and job.excluded_nodes == [carol_node.pk]
