"""Lock order between the ingest and the services that stop a job's parts: assignments first
(in id order), then the job (assignments.lock_job_and_parts). An agent's message locks its
assignment, and with a lifecycle message every active part of its job, then the job; a cancel
or a budget stop must take the same order, or PostgreSQL kills one side with "deadlock
detected" (CI saw the cancel request die so, with a 500, while the agent uploaded a commitment)."""

import contextlib
import threading
import time
from decimal import Decimal

import pytest
from django.db import connection, transaction

from marketplace.models import Assignment, Job
from marketplace.services import agent_ingest, budget, jobs

from .factories import JobFactory, NodeFactory, OfferFactory, two_node_parts

pytestmark = pytest.mark.django_db(transaction=True)


def _running_job() -> Job:
    job = JobFactory(status=Job.Status.RUNNING)
    node = NodeFactory()
    Assignment.objects.create(job=job, node=node, offer=OfferFactory(node=node), attempt=1,
                              node_rank=0, gpus=1, price_per_gpu_hour=Decimal("1"),
                              status=Assignment.Status.RUNNING)
    return job


def _race(job: Job, stop) -> list[BaseException]:
    """The ingest holds the assignment, the stop starts, then the ingest asks for the job."""
    errors: list[BaseException] = []
    held = threading.Event()

    def ingest():
        try:
            with transaction.atomic():
                Assignment.objects.select_for_update(of=("self",)).get(job=job)
                held.set()
                time.sleep(0.5)  # the stop is under way meanwhile
                Job.objects.select_for_update().get(pk=job.pk)
        except BaseException as e:  # noqa: BLE001  (the deadlock, reported below)
            errors.append(e)
        finally:
            connection.close()

    def stopper():
        held.wait(10)
        try:
            stop(Job.objects.get(pk=job.pk))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            connection.close()

    threads = [threading.Thread(target=ingest), threading.Thread(target=stopper)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a side is stuck behind a lock"
    return errors


def test_a_cancel_racing_an_agent_message_does_not_deadlock():
    job = _running_job()
    assert _race(job, lambda j: jobs.job_cancel(job=j)) == []
    assert Job.objects.get(pk=job.pk).status == Job.Status.CANCELLED
    assert Assignment.objects.get(job=job).status == Assignment.Status.CANCELLED


def test_a_budget_stop_racing_an_agent_message_does_not_deadlock():
    job = _running_job()
    check = budget.BudgetCheck(limit=Decimal("1"), spent=Decimal("1"), rate_per_s=Decimal("0.001"))
    assert _race(job, lambda j: budget.job_budget_stop(job_id=j.pk, check=check)) == []
    assert Assignment.objects.get(job=job).status == Assignment.Status.CANCELLED


def test_two_nodes_of_a_job_rejecting_at_once_do_not_deadlock(monkeypatch):
    # Each node's batch held its own assignment, then its handler took the job and stopped the
    # other part (_interrupt), held by the other batch waiting for the job: PostgreSQL killed
    # one ("deadlock detected"), whose message came back unapplied ("internal"). Now a
    # lifecycle message's batch locks the job's other active parts first, in id order.
    job = JobFactory(status=Job.Status.MATCHING, nodes=2)
    parts = two_node_parts(job, Assignment.Status.DISPATCHED)
    meet = threading.Barrier(2, timeout=3)
    real = agent_ingest.applicable

    def after_the_locks(parsed, rows, results):  # both batches hold what they locked, then go on
        with contextlib.suppress(threading.BrokenBarrierError):
            meet.wait()
        yield from real(parsed, rows, results)

    monkeypatch.setattr(agent_ingest, "applicable", after_the_locks)
    results: dict[int, object] = {}

    def reject(part: Assignment) -> None:
        try:
            results[part.pk] = agent_ingest.agent_data_batch(items=[(part.node, {
                "type": "assignment.rejected", "id": f"r{part.pk}", "assignment": part.pk, "seq": 1,
                "reason": "no room"})])
        except BaseException as e:  # noqa: BLE001  (reported below)
            results[part.pk] = e
        finally:
            connection.close()

    threads = [threading.Thread(target=reject, args=(part,)) for part in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a batch is stuck behind a lock"
    assert results == {parts[0].pk: [None], parts[1].pk: [None]}, results  # both applied
    assert set(Assignment.objects.filter(job=job).values_list("status", flat=True)) <= {
        Assignment.Status.FAILED, Assignment.Status.CANCELLED}
    # The first rejection interrupted the placement and left its node out; the second found
    # its part already stopped.
    assert set(Job.objects.get(pk=job.pk).excluded_nodes) & {p.node_id for p in parts}
