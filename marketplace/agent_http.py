"""Plain-HTTP transfers for agents: a dataset down, checkpoints up and down, the model up.
Each request carries the short-lived token of one running assignment (Bearer)."""

import hashlib
import io
import re
import tempfile
import zipfile

from django.conf import settings
from django.core.files import File
from django.db import IntegrityError, transaction
from django.db.models import Count, Sum
from django.http import FileResponse, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from .errors import Conflict, MarketError, PermissionDenied, Unauthorized
from .models import Assignment, Checkpoint, Job
from .selectors.checkpoints import checkpoints_resumable
from .services.commitments import MAX_BYTES as COMMITMENTS_MAX_BYTES
from .services.commitments import commitments_receive
from .services.datasets import dataset_read
from .services.execution import assignment_from_token
from .services.verification import checkpoint_validate_enqueue

SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _error(exc: MarketError) -> JsonResponse:
    return JsonResponse({"detail": exc.message, "code": exc.code}, status=exc.status_code)


def _assignment(request: HttpRequest, assignment_id: int) -> Assignment:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Send the assignment's token as 'Authorization: Bearer …'.")
    return assignment_from_token(token.strip(), assignment_id)


def _receive(request: HttpRequest) -> tuple[tempfile.SpooledTemporaryFile, str, int]:
    """Stream the body to a temporary file, checking size and the declared SHA-256."""
    declared = request.headers.get("X-Content-Sha256", "").lower()
    if not SHA256.match(declared):
        raise MarketError("Declare the body's SHA-256 in X-Content-Sha256.", field="sha256")
    digest, size = hashlib.sha256(), 0
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1_048_576)  # noqa: SIM115
    while chunk := request.read(1 << 20):
        size += len(chunk)
        if size > settings.CHECKPOINT_MAX_BYTES:
            raise MarketError(f"Larger than {settings.CHECKPOINT_MAX_BYTES} bytes.", field="body")
        digest.update(chunk)
        spool.write(chunk)
    if digest.hexdigest() != declared:
        raise MarketError("The body does not match its declared SHA-256.", field="sha256")
    spool.seek(0)
    return spool, declared, size


def _checkpoint_quota(job_id: int, size: int) -> None:
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


@csrf_exempt
@require_http_methods(["GET"])
def dataset(request, assignment_id: int):
    try:
        assignment = _assignment(request, assignment_id)
    except MarketError as exc:
        return _error(exc)
    ds = assignment.job.dataset
    if ds is None:
        return JsonResponse({"detail": "This job uses a bundled sample."}, status=404)
    try:
        plain = dataset_read(ds)  # stored encrypted; the assignment's token is the key's guard here
    except MarketError as exc:
        return _error(exc)
    return FileResponse(io.BytesIO(plain), as_attachment=True, filename=f"dataset-{ds.pk}.csv",
                        content_type="text/csv")


@csrf_exempt
@require_http_methods(["GET", "PUT"])
def checkpoint(request, assignment_id: int, step: int):
    try:
        assignment = _assignment(request, assignment_id)
        if request.method == "GET":
            # Only a checkpoint work may resume from is handed to another node: a garbage one
            # would fail that node's resume and get it blamed.
            ckpt = checkpoints_resumable(Checkpoint.objects.filter(job=assignment.job_id, step=step)).first()
            if ckpt is None:
                return JsonResponse({"detail": "No committed, valid checkpoint at that step."}, status=404)
            return FileResponse(ckpt.file.open("rb"), filename=f"step-{step}.pt")
        if assignment.node_rank != 0:
            raise PermissionDenied("Only node rank 0 uploads checkpoints.")
        if step <= (assignment.resume_step or 0):
            raise MarketError(f"Step {step} is not after step {assignment.resume_step or 0}, where this "
                              "placement started.", field="step")
        declared = request.headers.get("Content-Length", "")
        # Refused before the body is read when its declared size is already over the quota.
        _checkpoint_quota(assignment.job_id, int(declared) if declared.isdigit() else 0)
        body, sha, size = _receive(request)
        # What needs no torch is refused here; the rest (it loads with weights_only, holds
        # this job's model, its step) is checked on the verify queue, where the platform
        # already loads checkpoints (services/verification.checkpoint_validate).
        if not zipfile.is_zipfile(body):
            raise MarketError("Not a checkpoint: torch.save writes a zip archive.", field="body")
        body.seek(0)
        with transaction.atomic():
            # The ingest's lock order: the assignment, then the job. Locking the job first, the
            # insert's deferred foreign-key check then waited at commit for the assignment the
            # ingest held while it waited for the job: deadlocks in a two-node job's log.
            Assignment.objects.select_for_update(of=("self",)).filter(pk=assignment.pk).first()
            # Checked again on the job's locked row: two uploads at once cannot both take the last place.
            Job.objects.select_for_update().filter(pk=assignment.job_id).first()
            _checkpoint_quota(assignment.job_id, size)
            ckpt = Checkpoint(job_id=assignment.job_id, assignment=assignment, step=step, sha256=sha,
                              size_bytes=size)
            ckpt.file.save(f"job-{assignment.job_id}-step-{step}.pt", File(body), save=False)
            ckpt.save()
            checkpoint_validate_enqueue(ckpt)
    except IntegrityError:
        return JsonResponse({"detail": "That checkpoint was uploaded already."}, status=409)
    except MarketError as exc:
        return _error(exc)
    return JsonResponse({"step": step, "sha256": sha}, status=201)


@csrf_exempt
@require_http_methods(["PUT"])
def artifact(request, assignment_id: int):
    try:
        assignment = _assignment(request, assignment_id)
        if assignment.node_rank != 0:
            raise PermissionDenied("Only node rank 0 uploads the model.")
        body, sha, size = _receive(request)
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=assignment.job_id)
            job.artifact.save(f"job-{job.pk}-model.pt", File(body), save=False)
            job.artifact_sha256 = sha
            job.save(update_fields=["artifact", "artifact_sha256", "updated_at"])
    except MarketError as exc:
        return _error(exc)
    return JsonResponse({"sha256": sha, "bytes": size}, status=201)


@csrf_exempt
@require_http_methods(["PUT"])
def commitments(request, assignment_id: int, step: int):
    """This node's copy of every rank's gradient commitments of the steps before checkpoint
    `step` (DDP across nodes; every node's agent uploads its own: services/commitments.py)."""
    try:
        assignment = _assignment(request, assignment_id)
        declared = request.headers.get("X-Content-Sha256", "").lower()
        if not SHA256.match(declared):
            raise MarketError("Declare the body's SHA-256 in X-Content-Sha256.", field="sha256")
        body = request.read(COMMITMENTS_MAX_BYTES + 1)
        if len(body) > COMMITMENTS_MAX_BYTES:
            raise MarketError(f"Larger than {COMMITMENTS_MAX_BYTES} bytes.", field="body")
        if hashlib.sha256(body).hexdigest() != declared:
            raise MarketError("The body does not match its declared SHA-256.", field="sha256")
        created = commitments_receive(assignment, step=step, body=body, sha256=declared)
    except MarketError as exc:
        return _error(exc)
    return JsonResponse({"step": step, "sha256": declared}, status=201 if created else 200)
