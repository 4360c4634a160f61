"""Which nodes a job leaves out when it is placed again."""

from datetime import datetime, timedelta

from django.conf import settings

from ..models import Assignment, Checkpoint, Dispute, Job

A = Assignment.Status


def nodes_excluded(job: Job, *, now: datetime) -> set[int]:
    """The job's excluded nodes, less those readmitted: a node that was only *lost* on this
    job, once, NODE_LOST_READMIT_S ago or more (its agent restarted, its network dropped), may
    take part again. Without this a two-node job on a two-node network (the demo) waited for
    ever after one agent restart. A node lost twice, or that failed, cheated, wrote a rejected
    checkpoint or was stopped for a reason of its own (suspension, a hardware claim), stays out."""
    excluded = set(job.excluded_nodes)
    if not excluded:
        return excluded
    cutoff = now - timedelta(seconds=settings.NODE_LOST_READMIT_S)
    history: dict[int, list[tuple[str, datetime | None]]] = {}
    for node_id, status, finished_at in (Assignment.objects.filter(job=job, node_id__in=excluded)
                                         .values_list("node_id", "status", "finished_at")):
        history.setdefault(node_id, []).append((status, finished_at))
    at_fault = set(Dispute.objects.filter(assignment__job=job).values_list("assignment__node_id", flat=True))
    at_fault |= set(Checkpoint.objects.filter(job=job, status=Checkpoint.Status.REJECTED)
                    .values_list("assignment__node_id", flat=True))
    readmitted = set()
    for node_id, parts in history.items():
        lost = [at for status, at in parts if status == A.LOST]
        others_cancelled = all(status in (A.LOST, A.CANCELLED) for status, _ in parts)
        if (len(lost) == 1 and others_cancelled and node_id not in at_fault
                and lost[0] is not None and lost[0] <= cutoff):
            readmitted.add(node_id)
    return excluded - readmitted
