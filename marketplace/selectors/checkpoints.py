"""Which checkpoints count."""

from django.db.models import QuerySet

from ..models import Checkpoint
from ..trust_models import Dispute


def checkpoints_resumable(qs: QuerySet[Checkpoint]) -> QuerySet[Checkpoint]:
    """Committed checkpoints that work may resume from: none written by an assignment whose
    work failed verification (an open or upheld dispute); a dismissed dispute clears it."""
    disputed = Dispute.objects.exclude(status=Dispute.Status.DISMISSED).values("assignment_id")
    return qs.filter(committed_at__isnull=False).exclude(assignment_id__in=disputed)
