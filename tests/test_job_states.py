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

# The transitions the product makes, written out here rather than read from the module, so
# that a wrong entry in job_states.TRANSITIONS fails this file. Each entry names its caller.
EXPECTED: dict[str, set[str]] = {
    # services/jobs.py job_submit creates the draft and submits it in one transaction;
    # job_cancel accepts any cancellable job, a draft included.
    S.DRAFT: {S.SUBMITTED, S.CANCELLED},
    # escrow_events._start_if_covered (escrow funded) or job_submit (escrow disabled); job_cancel.
    S.SUBMITTED: {S.FUNDED, S.CANCELLED},
    # placement.job_place / batch_placement.jobs_place_waiting; job_cancel.
    S.FUNDED: {S.MATCHING, S.CANCELLED},
    # execution.assignment_accepted (every node accepted); job_cancel; execution._interrupt gives up
    # after too many placements, and a dataset error reported before every node accepted.
    S.MATCHING: {S.RUNNING, S.CANCELLED, S.FAILED},
    # execution._complete (training finished), _interrupt (node lost or failed), budget._pause,
    # job_cancel, and the failures above.
    S.RUNNING: {S.VERIFYING, S.INTERRUPTED, S.PAUSED, S.CANCELLED, S.FAILED},
    # DESIGN: interrupted goes back to matching (placement); job_cancel.
    S.INTERRUPTED: {S.MATCHING, S.CANCELLED},
    # budget.job_resume_if_covered after a top-up; job_cancel.
    S.PAUSED: {S.MATCHING, S.CANCELLED},
    # verification._passed; verification._failed re-places the work (interrupted) or gives
    # up after the last placement (failed). A job under verification cannot be cancelled.
    S.VERIFYING: {S.COMPLETED, S.INTERRUPTED, S.FAILED},
    # escrow_events.escrow_closed: the chain settled the escrow.
    S.COMPLETED: {S.SETTLED},
    # escrow_events.escrow_closed: work done before the stop is settled, or everything refunded.
    S.CANCELLED: {S.SETTLED, S.REFUNDED},
    S.FAILED: {S.SETTLED, S.REFUNDED},
    S.SETTLED: set(),
    S.REFUNDED: set(),
}
LEGAL = [(a, b) for a in ALL for b in ALL if b in EXPECTED[a]]
ILLEGAL = [(a, b) for a in ALL for b in ALL if b not in EXPECTED[a]]


def test_the_module_allows_exactly_the_expected_transitions():
    """Both ways: nothing expected is missing from the table, nothing extra is in it."""
    table = {a: set(b) for a, b in TRANSITIONS.items()}
    missing = sorted((a, b) for a in EXPECTED for b in EXPECTED[a] - table.get(a, set()))
    extra = sorted((a, b) for a in table for b in table[a] - EXPECTED.get(a, set()))
    assert (missing, extra) == ([], [])


def test_cancellable_statuses_are_those_before_verification():
    assert job_states.CANCELLABLE == {S.DRAFT, S.SUBMITTED, S.FUNDED, S.MATCHING, S.RUNNING,
                                      S.INTERRUPTED, S.PAUSED}


def test_status_groups_agree_with_the_table():
    """Job.Status's groups are data beside the table: a terminal job never works again, an
    active one can always still end, and waiting jobs are active ones without training."""
    assert S.ACTIVE == {S.FUNDED, S.MATCHING, S.RUNNING, S.INTERRUPTED, S.PAUSED, S.VERIFYING}
    assert S.TERMINAL == {S.COMPLETED, S.SETTLED, S.CANCELLED, S.FAILED, S.REFUNDED}
    assert S.WAITING == S.ACTIVE - {S.RUNNING, S.VERIFYING}
    assert set(ALL) == S.ACTIVE | S.TERMINAL | {S.DRAFT, S.SUBMITTED}
    assert not S.ACTIVE & S.TERMINAL
    assert all(not TRANSITIONS[t] & S.ACTIVE for t in S.TERMINAL)
    assert all(TRANSITIONS[a] & S.TERMINAL for a in S.ACTIVE)
    assert all(JobFactory.build(status=t).is_terminal for t in S.TERMINAL)


def test_every_status_has_a_row():
    assert set(TRANSITIONS) == set(EXPECTED) == set(ALL)


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
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a transition is stuck behind the row lock"
    assert sorted(results).count("refused") == 1
    assert JobEvent.objects.filter(job=job).count() == 1
    assert Job.objects.get(pk=job.pk).status in (S.VERIFYING, S.CANCELLED)
