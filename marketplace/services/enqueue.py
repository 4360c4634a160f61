"""Enqueue Celery tasks by name once the transaction commits (never inside it), so the
platform's services do not import the workers package."""

import logging

from celery import current_app
from django.core.cache import cache
from django.db import transaction

from .. import task_names

log = logging.getLogger(__name__)


def _send(task: str, args: list, countdown: float | None) -> None:
    try:
        current_app.send_task(task, args=args, countdown=countdown)
    except Exception as exc:  # noqa: BLE001  (the broker's client fails in many ways while it is down)
        # The transaction is committed: answering the request with a 500 would tell the
        # caller its write failed when it did not (an agent's checkpoint upload during a
        # Redis restart did). The message is lost as in a worker crash; the periodic
        # sweeps (stale checks, rematching, settlement) queue the work again.
        log.warning("could not queue %s%s, the periodic sweeps will: %s: %s", task, tuple(args),
                    type(exc).__name__, exc)


def enqueue(task: str, *args, countdown: float | None = None) -> None:
    transaction.on_commit(lambda: _send(task, list(args), countdown))


def match_job(job_id: int) -> None:
    enqueue(task_names.MATCH_JOB, job_id)


def dispatch_assignment(assignment_id: int) -> None:
    enqueue(task_names.DISPATCH_ASSIGNMENT, assignment_id)


def rematch_soon() -> None:
    """Offers or nodes changed: retry waiting jobs shortly, at most once per two seconds
    however many changes arrive (the cache key debounces)."""

    if cache.add("computemesh:rematch-scheduled", 1, timeout=2):
        enqueue(task_names.REMATCH_WAITING, countdown=1)
