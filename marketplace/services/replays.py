"""Asking for the replay spot check of the checkpoint that work would resume from.

Before work resumes from a checkpoint of an attempt that broke or paused, and before that
attempt is paid up to it, the work up to it must replay (issue 12, item 4: garbage of the
right shapes passes the upload checks). Placement asks when it finds a job waiting for that
check, and the execution asks as soon as an attempt breaks, so that the answer is usually
there first. The check itself is services/checkpoint_checks.checkpoint_replay, on the verify queue.
"""

from django.utils import timezone

from .. import task_names
from ..models import Checkpoint
from ..selectors.checkpoints import replay_candidate
from . import enqueue


def replay_request(job_id: int) -> int | None:
    """Queue the replay of the job's resume candidate once; returns its step (None: no
    checkpoint waits for one)."""
    candidate = replay_candidate(job_id)
    if candidate is None:
        return None
    if Checkpoint.objects.filter(pk=candidate.pk, replay_requested_at__isnull=True).update(
            replay_requested_at=timezone.now()):
        enqueue.enqueue(task_names.CHECKPOINT_REPLAY, candidate.pk)
    return candidate.step
