"""The job state machine: the only code that writes `Job.status`.

Every transition runs in a transaction with the job's row locked, checks that it is
legal, and appends a JobEvent with a machine-readable reason and a human message. Who
watches jobs hears of it through `job_changed` (the browser's live views: services/live.py,
connected in apps.py): the state machine imports no service.
"""

from typing import Any

from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from .errors import Conflict
from .models import Job, JobEvent

S = Job.Status

# Sent with `job_id` after each recorded change (a transition or a note), inside its
# transaction; receivers act after commit.
job_changed = Signal()

TRANSITIONS: dict[str, frozenset[str]] = {
    S.DRAFT: frozenset({S.SUBMITTED, S.CANCELLED}),
    S.SUBMITTED: frozenset({S.FUNDED, S.CANCELLED}),
    S.FUNDED: frozenset({S.MATCHING, S.CANCELLED}),
    S.MATCHING: frozenset({S.RUNNING, S.CANCELLED, S.FAILED}),
    S.RUNNING: frozenset({S.VERIFYING, S.INTERRUPTED, S.PAUSED, S.CANCELLED, S.FAILED}),
    S.INTERRUPTED: frozenset({S.MATCHING, S.CANCELLED}),
    # The budget is spent: the nodes checkpointed and stopped; a top-up resumes from there.
    S.PAUSED: frozenset({S.MATCHING, S.CANCELLED}),
    # A failed verification re-runs the work elsewhere (interrupted → matching).
    S.VERIFYING: frozenset({S.COMPLETED, S.INTERRUPTED, S.FAILED}),
    S.COMPLETED: frozenset({S.SETTLED}),
    # Cancelled and failed jobs that were funded still settle the work done (or refund).
    S.CANCELLED: frozenset({S.SETTLED, S.REFUNDED}),
    S.FAILED: frozenset({S.SETTLED, S.REFUNDED}),
    S.SETTLED: frozenset(),
    S.REFUNDED: frozenset(),
}

# The groups of statuses (active, terminal, waiting) are data on Job.Status.
CANCELLABLE = frozenset(s for s, targets in TRANSITIONS.items() if S.CANCELLED in targets)


class IllegalTransition(Conflict):
    def __init__(self, job: Job, to_status: str):
        super().__init__(
            f"Job #{job.pk} is {job.get_status_display().lower()}; it cannot become "
            f"{S(to_status).label.lower()}.",
            code="illegal_transition",
        )
        self.from_status = job.status
        self.to_status = to_status


def can_transition(from_status: str, to_status: str) -> bool:
    return to_status in TRANSITIONS.get(from_status, frozenset())


def transition(
    *,
    job_id: int,
    to: str,
    reason: str,
    message: str,
    actor=None,
    data: dict[str, Any] | None = None,
    expect: frozenset[str] | set[str] | None = None,
) -> Job:
    """Move a job to `to`, or raise IllegalTransition (also when its status is not one of
    `expect`, so that a stale caller cannot act on a job that has moved on)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if (expect is not None and job.status not in expect) or not can_transition(job.status, to):
            raise IllegalTransition(job, to)
        from_status = job.status
        job.status = to
        job.status_changed_at = timezone.now()
        job.save(update_fields=["status", "status_changed_at", "updated_at"])
        JobEvent.objects.create(job=job, from_status=from_status, to_status=to, reason=reason,
                                message=message, data=data or {}, actor=actor)
        job_changed.send(sender=Job, job_id=job.pk)
    return job


def note(*, job_id: int, reason: str, message: str, data: dict[str, Any] | None = None,
         actor=None) -> JobEvent:
    """A timeline entry without a status change (e.g. why matching found nothing)."""
    event = JobEvent.objects.create(job_id=job_id, reason=reason, message=message,
                                    data=data or {}, actor=actor)
    job_changed.send(sender=Job, job_id=job_id)
    return event


def transition_many(*, job_ids: list[int], to: str, reason: str, message: str,
                    expect: frozenset[str] | set[str]) -> list[int]:
    """Move many jobs at once (the batch matcher). Only jobs whose current status is in
    `expect` and may become `to` move; returns their ids. One UPDATE, one INSERT."""
    sources = [s for s in expect if can_transition(s, to)]
    with transaction.atomic():
        rows = list(Job.objects.select_for_update().filter(pk__in=job_ids, status__in=sources)
                    .values_list("pk", "status"))
        moved = [pk for pk, _ in rows]
        Job.objects.filter(pk__in=moved).update(status=to, status_changed_at=timezone.now(),
                                                updated_at=timezone.now())
        JobEvent.objects.bulk_create([
            JobEvent(job_id=pk, from_status=status, to_status=to, reason=reason, message=message)
            for pk, status in rows])
    return moved
