"""Plain-HTTP transfers for agents: checkpoints up and down, the model up (datasets and
Each request carries the short-lived token of one running assignment (Bearer). The views
parse and authenticate; the rules and the writes are in services/transfers.py."""

import hashlib
import re
import tempfile

from django.conf import settings
from django.http import FileResponse, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from .errors import MarketError, Unauthorized
from .models import Assignment
from .services import transfers
from .services.commitments import MAX_BYTES as COMMITMENTS_MAX_BYTES
from .services.commitments import commitments_receive
from .services.execution import assignment_from_token

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


@csrf_exempt
@require_http_methods(["GET", "PUT"])
def checkpoint(request, assignment_id: int, step: int):
    try:
        assignment = _assignment(request, assignment_id)
        if request.method == "GET":
            ckpt = transfers.checkpoint_to_resume(assignment, step)
            return FileResponse(ckpt.file.open("rb"), filename=f"step-{step}.pt")
        declared = request.headers.get("Content-Length", "")
        # Refused before the body is read when it cannot be taken anyway.
        transfers.checkpoint_upload_allowed(assignment, step, int(declared) if declared.isdigit() else 0)
        body, sha, size = _receive(request)
        transfers.checkpoint_store(assignment, step, body, sha, size)
    except MarketError as exc:
        return _error(exc)
    return JsonResponse({"step": step, "sha256": sha}, status=201)


@csrf_exempt
@require_http_methods(["PUT"])
def artifact(request, assignment_id: int):
    try:
        assignment = _assignment(request, assignment_id)
        transfers.artifact_upload_allowed(assignment)
        body, sha, size = _receive(request)
        transfers.artifact_store(assignment, body, sha)
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
