"""Celery tasks for matching and supervision. Thin: they take ids, reload, and call the
marketplace's services, which check state and are idempotent."""

import logging

from celery import shared_task

from marketplace import task_names
from marketplace.models import Assignment, Job
from marketplace.services import batch_placement, budget, execution, live, placement, reputation

log = logging.getLogger(__name__)

RELIABLE = {"acks_late": True, "reject_on_worker_lost": True}


@shared_task(name=task_names.MATCH_JOB, time_limit=120, soft_time_limit=100, **RELIABLE)
def match_job(job_id: int) -> int:
    """Place a job; its assignments are dispatched once the placement commits."""
    if not Job.objects.filter(pk=job_id).exists():
        return 0
    assignments = placement.job_place(job_id=job_id)
    for assignment_id in execution.dispatchable(assignments):
        dispatch = task_names.DISPATCH_ASSIGNMENT
        match_job.app.send_task(dispatch, args=[assignment_id])
    return len(assignments)


@shared_task(name=task_names.REMATCH_WAITING, time_limit=300, soft_time_limit=280)
def rematch_waiting() -> int:
    """Retry every waiting job in one pass (periodically, and when offers change)."""
    placed = batch_placement.jobs_place_waiting()
    dispatch = task_names.DISPATCH_ASSIGNMENT
    assignments = Assignment.objects.select_related("job").filter(
        pk__in=[a for ids in placed.values() for a in ids])
    for assignment_id in execution.dispatchable(list(assignments)):
        rematch_waiting.app.send_task(dispatch, args=[assignment_id])
    # DiLoCo jobs that lost a node go on without it until a replacement can be placed.
    execution.diloco_fill_missing()
    execution.assignments_dispatch_stalled()
    return len(placed)


@shared_task(name=task_names.EXPLAIN_WAIT, time_limit=60, soft_time_limit=50)
def explain_wait(job_id: int) -> None:
    """Put on a waiting job's timeline why nothing fits it yet."""
    placement.job_explain_wait(job_id=job_id)


@shared_task(name=task_names.HEARTBEAT_WATCHDOG, time_limit=60, soft_time_limit=50)
def heartbeat_watchdog() -> int:
    """Nodes whose heartbeats stopped go offline; their jobs resume elsewhere."""
    lost = 0
    for node_id in execution.nodes_silent():
        log.warning("node %s stopped heartbeating", node_id)
        lost += execution.node_lost(node_id=node_id)
    return lost


@shared_task(name=task_names.ATTEMPT_FAILURE_SETTLE, time_limit=60, soft_time_limit=50, **RELIABLE)
def attempt_failure_settle(job_id: int, attempt: int) -> bool:
    """A node of a multi-node job failed a while ago and none of its peers was lost since:
    that node is blamed and the job placed again (services/execution.py, _blame_later)."""
    return execution.attempt_failure_settle(job_id=job_id, attempt=attempt)


@shared_task(name=task_names.ANNOUNCE_JOBS, time_limit=120, soft_time_limit=100)
def announce_jobs(job_ids: list[int]) -> int:
    """Send the current state of these jobs to their live watchers."""
    for job_id in job_ids:
        live.job_changed(job_id)
    live.offers_changed(Assignment.objects.filter(job_id__in=job_ids, status__in=Assignment.ACTIVE)
                        .values_list("offer_id", flat=True).distinct())
    return len(job_ids)


@shared_task(name=task_names.BUDGET_WATCH, time_limit=60, soft_time_limit=50)
def budget_watch() -> dict:
    """Running jobs near or at their budget: warn, or checkpoint and pause them."""
    return budget.budget_watch()


@shared_task(name=task_names.NODE_REPUTATION, time_limit=60, soft_time_limit=50)
def node_reputation(node_id: int) -> str | None:
    """Recompute one node's reliability (an assignment of it ended)."""
    from marketplace.models import Node

    if not Node.objects.filter(pk=node_id).exists():
        return None
    node = reputation.node_reputation_update(node_id=node_id)
    return str(node.reliability) if node.reliability is not None else "new"


@shared_task(name=task_names.REPUTATIONS_UPDATE, time_limit=600, soft_time_limit=570)
def reputations_update() -> int:
    """Every active node's reliability over the rolling window (beat)."""
    return reputation.reputations_update()
