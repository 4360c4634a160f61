"""Which checkpoints count."""

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Max, Q, QuerySet

from ..models import Checkpoint, Dispute

C = Checkpoint.Status


def _disputed():
    """Assignments whose work failed verification (an open or upheld dispute)."""
    return Dispute.objects.exclude(status=Dispute.Status.DISMISSED).values("assignment_id")


def trusted() -> Q:
    """Checkpoints whose work is trusted: valid on upload, and the work up to them passed a
    replay spot check (VERIFIED). A DiLoCo job across nodes cannot be replayed step by step
    (each node trains its own group; the outer steps mix every node's work): its valid
    checkpoints are trusted as they are, and its final model is checked on held-out data."""
    return Q(status=C.VERIFIED) | Q(status=C.VALID, job__sync__mode="diloco", job__nodes__gt=1)


def checkpoints_resumable(qs: QuerySet[Checkpoint]) -> QuerySet[Checkpoint]:
    """Committed checkpoints that work may resume from: trusted, and none written by an
    assignment whose work failed verification (an open or upheld dispute); a dismissed
    dispute clears it."""
    disputed = _disputed()
    return qs.filter(trusted(), committed_at__isnull=False).exclude(assignment_id__in=disputed)


def checkpoints_payable(qs: QuerySet[Checkpoint]) -> QuerySet[Checkpoint]:
    """Checkpoints a broken attempt is paid up to: committed and trusted (it loads as
    tensors, holds the job's model, its step fits the progress reported, and the work up to
    it replays). Garbage committed on schedule before vanishing earns nothing, even garbage
    of the right shapes."""
    return qs.filter(trusted(), committed_at__isnull=False)


def replay_candidate(job_id: int) -> Checkpoint | None:
    """The checkpoint that work would resume from once its replay passed: the newest valid,
    committed, undisputed one, when it is newer than every trusted one."""
    disputed = _disputed()
    newest_trusted = (checkpoints_resumable(Checkpoint.objects.filter(job_id=job_id))
                      .aggregate(step=Max("step"))["step"])
    qs = (Checkpoint.objects.filter(job_id=job_id, status=C.VALID, committed_at__isnull=False)
          .exclude(assignment_id__in=disputed).exclude(trusted()))
    if newest_trusted is not None:
        qs = qs.filter(step__gt=newest_trusted)
    return qs.order_by("-step").first()


def jobs_awaiting_checkpoint_check(job_ids: list[int], *, now: datetime) -> dict[int, int]:
    """{job id: step} for jobs whose newest committed checkpoint is still waiting for its check
    (on upload, or its replay: the verify queue) and is newer than every trusted one: placed
    now, they would resume from an older checkpoint, or from step 0, and redo (and pay again
    for) the work it holds. The wait is bounded: a check not done within
    CHECKPOINT_CHECK_WAIT_S (of the upload, or of asking for the replay) no longer holds it."""
    since = now - timedelta(seconds=settings.CHECKPOINT_CHECK_WAIT_S)
    valid = dict(checkpoints_resumable(Checkpoint.objects.filter(job_id__in=job_ids))
                 .values_list("job").annotate(step=Max("step")))
    disputed = _disputed()
    waiting = (Checkpoint.objects.filter(job_id__in=job_ids, committed_at__isnull=False)
               .exclude(assignment_id__in=disputed)
               .filter(Q(status=C.PENDING, committed_at__gte=since)
                       | (Q(status=C.VALID) & ~trusted()
                          & (Q(replay_requested_at__isnull=True) | Q(replay_requested_at__gte=since))))
               .values_list("job").annotate(step=Max("step")))
    return {job_id: step for job_id, step in waiting if step > valid.get(job_id, -1)}


def partial_result(job_id: int) -> Checkpoint | None:
    """The newest checkpoint the consumer may download as its partial result (a job cancelled,
    failed, paused or interrupted before its model): one the platform trusts and paid for,
    never one written by an assignment whose work failed verification (an open or upheld
    dispute) and never one rejected or still being checked."""
    qs = checkpoints_resumable(Checkpoint.objects.filter(job_id=job_id)).exclude(file="")
    return qs.order_by("-step").first()
