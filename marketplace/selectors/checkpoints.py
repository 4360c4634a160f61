"""Which checkpoints count."""

from django.db.models import QuerySet

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
