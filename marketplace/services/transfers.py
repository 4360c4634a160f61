"""What agents move over plain HTTP (agent_http.py): a dataset down, checkpoints up and
down, the trained model up. The views parse the request and authenticate the assignment's
token; the rules and the writes are here."""

import zipfile
from typing import IO

from django.conf import settings
from django.core.files import File
from django.db import IntegrityError, transaction
from django.db.models import Count, Sum

from ..errors import Conflict, MarketError, NotFound, PermissionDenied
from ..models import Assignment, Checkpoint, Job
from ..selectors.checkpoints import checkpoints_resumable
from .checkpoint_checks import checkpoint_validate_enqueue
from .datasets import dataset_read


def assignment_dataset(assignment: Assignment) -> tuple[bytes, str]:
    """The job's dataset as uploaded, and a file name for it."""
    ds = assignment.job.dataset
    if ds is None:
        raise NotFound("This job uses a bundled sample.")
    return dataset_read(ds), f"dataset-{ds.pk}.csv"  # stored encrypted; the token guards it here


def checkpoint_to_resume(assignment: Assignment, step: int) -> Checkpoint:
    """Only a checkpoint work may resume from is handed to another node: a garbage one would
    fail that node's resume and get it blamed."""
    ckpt = checkpoints_resumable(Checkpoint.objects.filter(job=assignment.job_id, step=step)).first()
    if ckpt is None:
        raise NotFound("No committed, valid checkpoint at that step.")
    return ckpt


def checkpoint_quota(job_id: int, size: int) -> None:
    """A job's checkpoints take at most CHECKPOINTS_MAX_PER_JOB files and
    CHECKPOINT_BYTES_MAX_PER_JOB bytes on the platform, all attempts together: a provider's
    agent cannot fill the platform's disk through one job."""
    held = Checkpoint.objects.filter(job_id=job_id).aggregate(n=Count("pk"), bytes=Sum("size_bytes"))
    count_max, bytes_max = settings.CHECKPOINTS_MAX_PER_JOB, settings.CHECKPOINT_BYTES_MAX_PER_JOB
    taken = (held["bytes"] or 0) + size
    if held["n"] >= count_max:
        raise Conflict(f"This job already has {held['n']} checkpoints on the platform, its limit "
                       f"(CHECKPOINTS_MAX_PER_JOB = {count_max}); checkpoint less often.",
                       code="checkpoint_quota")
    if taken > bytes_max:
        raise Conflict(f"This job's checkpoints would take {taken} bytes on the platform, more than "
                       f"its limit of {bytes_max} (CHECKPOINT_BYTES_MAX_PER_JOB).", code="checkpoint_quota")


def checkpoint_upload_allowed(assignment: Assignment, step: int, declared_size: int) -> None:
    """What is refused before the body is read: another rank, a step not after where this
    placement started, a declared size already over the job's quota."""
    if assignment.node_rank != 0:
        raise PermissionDenied("Only node rank 0 uploads checkpoints.")
    if step <= (assignment.resume_step or 0):
        raise MarketError(f"Step {step} is not after step {assignment.resume_step or 0}, where this "
                          "placement started.", field="step")
    checkpoint_quota(assignment.job_id, declared_size)


def checkpoint_store(assignment: Assignment, step: int, body: IO[bytes], sha256: str,
                     size: int) -> Checkpoint:
    """Keep an uploaded checkpoint (its SHA-256 already checked) and queue its validation.
    What needs no torch is refused here; the rest (it loads with weights_only, holds this
    job's model, its step) is checked on the verify queue (services/verification.py)."""
    checkpoint_upload_allowed(assignment, step, size)
    if not zipfile.is_zipfile(body):
        raise MarketError("Not a checkpoint: torch.save writes a zip archive.", field="body")
    body.seek(0)
    try:
        with transaction.atomic():
            # The ingest's lock order: the assignment, then the job. Locking the job first, the
            # insert's deferred foreign-key check then waited at commit for the assignment the
            # ingest held while it waited for the job: deadlocks in a two-node job's log.
            Assignment.objects.select_for_update(of=("self",)).filter(pk=assignment.pk).first()
            # Checked again on the job's locked row: two uploads at once cannot both take the last place.
            Job.objects.select_for_update().filter(pk=assignment.job_id).first()
            checkpoint_quota(assignment.job_id, size)
            ckpt = Checkpoint(job_id=assignment.job_id, assignment=assignment, step=step, sha256=sha256,
                              size_bytes=size)
            ckpt.file.save(f"job-{assignment.job_id}-step-{step}.pt", File(body), save=False)
            ckpt.save()
            checkpoint_validate_enqueue(ckpt)
    except IntegrityError:
        raise Conflict("That checkpoint was uploaded already.", code="checkpoint_exists") from None
    return ckpt


def artifact_upload_allowed(assignment: Assignment) -> None:
    if assignment.node_rank != 0:
        raise PermissionDenied("Only node rank 0 uploads the model.")


def artifact_store(assignment: Assignment, body: IO[bytes], sha256: str) -> Job:
    """Keep the trained model node rank 0 uploaded (its SHA-256 already checked)."""
    artifact_upload_allowed(assignment)
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=assignment.job_id)
        job.artifact.save(f"job-{job.pk}-model.pt", File(body), save=False)
        job.artifact_sha256 = sha256
        job.save(update_fields=["artifact", "artifact_sha256", "updated_at"])
    return job
