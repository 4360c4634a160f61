"""Which checkpoints count."""

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Max, QuerySet

from ..models import Checkpoint
from ..trust_models import Dispute


def checkpoints_resumable(qs: QuerySet[Checkpoint]) -> QuerySet[Checkpoint]:
    """Committed checkpoints that work may resume from: checked valid when uploaded
    (services/verification.checkpoint_validate), and none written by an assignment whose
    work failed verification (an open or upheld dispute); a dismissed dispute clears it."""
    disputed = Dispute.objects.exclude(status=Dispute.Status.DISMISSED).values("assignment_id")
    return (qs.filter(committed_at__isnull=False, status=Checkpoint.Status.VALID)
            .exclude(assignment_id__in=disputed))


def checkpoints_payable(qs: QuerySet[Checkpoint]) -> QuerySet[Checkpoint]:
    """Checkpoints a broken attempt is paid up to: committed and checked valid when uploaded
    (it loads as tensors, holds the job's model, its step fits the progress reported). A
    garbage checkpoint committed on schedule before vanishing earns nothing."""
    return qs.filter(committed_at__isnull=False, status=Checkpoint.Status.VALID)


def jobs_awaiting_checkpoint_check(job_ids: list[int], *, now: datetime) -> dict[int, int]:
    """{job id: step} for jobs whose newest committed checkpoint is still waiting for its check
    (verify queue) and is newer than every valid one: placed now, they would resume from an
    older checkpoint, or from step 0, and redo (and pay again for) the work it holds. The wait
    is bounded: a check not done within CHECKPOINT_CHECK_WAIT_S no longer holds the job."""
    since = now - timedelta(seconds=settings.CHECKPOINT_CHECK_WAIT_S)
    valid = dict(checkpoints_resumable(Checkpoint.objects.filter(job_id__in=job_ids))
                 .values_list("job").annotate(step=Max("step")))
    pending = (Checkpoint.objects.filter(job_id__in=job_ids, committed_at__gte=since,
                                         status=Checkpoint.Status.PENDING)
               .values_list("job").annotate(step=Max("step")))
    return {job_id: step for job_id, step in pending if step > valid.get(job_id, -1)}
