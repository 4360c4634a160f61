"""The dispatch queue: send a placed assignment to its provider's agent."""

from celery import shared_task

from marketplace import task_names
from marketplace.services import execution


@shared_task(name=task_names.DISPATCH_ASSIGNMENT, time_limit=60, soft_time_limit=50,
             acks_late=True, reject_on_worker_lost=True)
def dispatch_assignment(assignment_id: int) -> bool:
    return execution.assignment_dispatch(assignment_id=assignment_id)
