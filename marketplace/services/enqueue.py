"""Enqueue Celery tasks by name once the transaction commits (never inside it), so the
platform's services do not import the workers package."""

from celery import current_app
from django.db import transaction

from .. import task_names


def enqueue(task: str, *args, countdown: float | None = None) -> None:
    transaction.on_commit(lambda: current_app.send_task(task, args=list(args), countdown=countdown))


def match_job(job_id: int) -> None:
    enqueue(task_names.MATCH_JOB, job_id)


def dispatch_assignment(assignment_id: int) -> None:
    enqueue(task_names.DISPATCH_ASSIGNMENT, assignment_id)


def rematch_soon() -> None:
    """Offers or nodes changed: retry waiting jobs shortly, at most once per two seconds
    however many changes arrive (the cache key debounces)."""
    from django.core.cache import cache

    if cache.add("computemesh:rematch-scheduled", 1, timeout=2):
        enqueue(task_names.REMATCH_WAITING, countdown=1)
