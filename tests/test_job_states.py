"""The job state machine: every legal transition works and is logged; every other raises."""

import threading

import pytest
from django.db import connection

from marketplace import job_states
from marketplace.job_states import TRANSITIONS, IllegalTransition
from marketplace.models import Job, JobEvent

from .factories import JobFactory

S = Job.Status
ALL = list(S.values)
LEGAL = [(a, b) for a, targets in TRANSITIONS.items() for b in targets]
ILLEGAL = [(a, b) for a in ALL for b in ALL if b not in TRANSITIONS[a]]


def test_every_status_has_a_row():
    assert set(TRANSITIONS) == set(ALL)


@pytest.mark.parametrize(("src", "dst"), LEGAL)
def test_legal_transitions_are_applied_and_logged(db, src, dst):
    job = JobFactory(status=src)
    job_states.transition(job_id=job.pk, to=dst, reason="test", message="because")
    job.refresh_from_db()
    assert job.status == dst
    event = JobEvent.objects.get(job=job)
    assert (event.from_status, event.to_status, event.reason) == (src, dst, "test")


@pytest.mark.parametrize(("src", "dst"), ILLEGAL)
def test_illegal_transitions_raise_and_change_nothing(db, src, dst):
    job = JobFactory(status=src)
    with pytest.raises(IllegalTransition):
        job_states.transition(job_id=job.pk, to=dst, reason="test", message="no")
    job.refresh_from_db()
    assert job.status == src
    assert not JobEvent.objects.filter(job=job).exists()


def test_expect_guards_against_stale_callers(db):
    job = JobFactory(status=S.MATCHING)
    with pytest.raises(IllegalTransition):
        job_states.transition(job_id=job.pk, to=S.CANCELLED, reason="x", message="x",
                              expect={S.RUNNING})
    assert Job.objects.get(pk=job.pk).status == S.MATCHING


def test_settled_and_refunded_are_final():
    assert TRANSITIONS[S.SETTLED] == frozenset()
    assert TRANSITIONS[S.REFUNDED] == frozenset()


@pytest.mark.django_db(transaction=True)
def test_concurrent_transitions_apply_once():
    """Two workers race to move the same job: the row lock lets exactly one win."""
    job = JobFactory(status=S.RUNNING)
    results: list[str] = []
    barrier = threading.Barrier(2)

    def worker(target):
        barrier.wait()
        try:
            job_states.transition(job_id=job.pk, to=target, reason="race", message="race")
            results.append(target)
        except IllegalTransition:
            results.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in (S.VERIFYING, S.CANCELLED)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results).count("refused") == 1
    assert JobEvent.objects.filter(job=job).count() == 1
    assert Job.objects.get(pk=job.pk).status in (S.VERIFYING, S.CANCELLED)
