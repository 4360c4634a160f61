"""Lock order between the ingest and the services that stop a job's parts: an agent's message
locks its assignment and then the job (execution._lock_job's order); a cancel or a budget stop
must take the same order, or PostgreSQL kills one side with "deadlock detected" (CI saw the
cancel request die so, with a 500, while the agent uploaded a commitment)."""

import threading
import time
from decimal import Decimal

import pytest
from django.db import connection, transaction

from marketplace.models import Assignment, Job
from marketplace.services import budget, jobs

from .factories import JobFactory, NodeFactory, OfferFactory

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
