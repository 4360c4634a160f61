"""An assignment's claims: the compare-and-set updates that move it on exactly once (placed
→ dispatched, active → ended), and what ending one sets off (its GPUs freed, its agent told,
its node's record and its job's resume point checked again). The lifecycle
(services/execution.py) and budget safety (services/budget.py) decide when.
"""

from django.utils import timezone

from .. import task_names
from ..models import Assignment, Job
from . import enqueue, placement, replays
from .agent_protocol import cancel_message, send_to_node

A = Assignment.Status


def assignment_claim_dispatch(assignment_id: int) -> Assignment | None:
    """Claim a placed assignment for sending (pending → dispatched): the assignment, with its
    job, or None when another caller claimed it first or it is no longer pending."""
    claimed = Assignment.objects.filter(pk=assignment_id, status=A.PENDING).update(
        status=A.DISPATCHED, dispatched_at=timezone.now())
    if claimed != 1:
        return None
    return Assignment.objects.select_related("job").get(pk=assignment_id)


def assignment_end(assignment: Assignment, status: str, detail: str = "") -> bool:
    """Move an active assignment to a final status exactly once, freeing its GPUs."""
    done = Assignment.objects.filter(pk=assignment.pk, status__in=Assignment.ACTIVE).update(
        status=status, detail=detail[:2000], finished_at=timezone.now())
    if done:
        placement.release(assignment)
        enqueue.enqueue(task_names.NODE_REPUTATION, assignment.node_id)  # its record changed
        if status in (A.CANCELLED, A.LOST, A.FAILED):
            send_to_node(assignment.node_id, cancel_message(assignment.pk, detail[:200] or status))
        if status in (A.LOST, A.FAILED, A.PAUSED):
            # The work stops short: its resume point must replay before it is resumed from
            # or paid up to. Asked now, the answer is usually there before the next placement.
            replays.replay_request(assignment.job_id)
    return bool(done)


def lock_job_and_parts(job_id: int) -> Job:
    """Lock a job to end or stop its parts, in the ingest's order: its active assignments
    first (by id), then the job. Every service that stops a job's parts locks through here:
    an agent's message holds its assignment and then asks for the job, so locking the job
    first deadlocked with it (a cancel died so, tests/test_lock_order.py)."""
    list(Assignment.objects.select_for_update(of=("self",))
         .filter(job_id=job_id, status__in=Assignment.ACTIVE).order_by("pk").values_list("pk", flat=True))
    return Job.objects.select_for_update().get(pk=job_id)


def job_stop_assignments(*, job: Job, reason: str, status: str = A.CANCELLED,
                         except_id: int | None = None) -> int:
    """End every active assignment of a job (but `except_id`) with `status`; how many ended."""
    stopped = 0
    for assignment in job.assignments.filter(status__in=Assignment.ACTIVE):
        if assignment.pk != except_id:
            stopped += assignment_end(assignment, status, reason)
    return stopped
