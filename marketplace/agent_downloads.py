"""What an agent downloads for a code bundle's job, streamed and resumable: the bundle, a
large (segment-encrypted) dataset, and a fine-tune's input weights. `Range: bytes=N-`
resumes a download cut off at byte N; each answer carries the plaintext's length and
SHA-256 so that the agent checks what it got.
Authorised like every agent transfer: the running assignment's token (agent_http.py)."""

import io
import re

from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from .agent_http import _assignment, _error
from .errors import MarketError
from .services import sealed, transfers
from .services.datasets import sealed_key, stored_chunks

RANGE = re.compile(r"^bytes=(\d{1,18})-$")


def stored_file_response(request: HttpRequest, file, *, sha256: str, filename: str,
                         content_type: str = "application/octet-stream") -> HttpResponse:
    """A stored dataset or bundle file's plaintext, with open-ended Range support when it is
    segment-encrypted (whole-file encrypted ones are small: always sent whole)."""
    with file.open("rb") as f:
        is_segmented = sealed.is_sealed(f.read(len(sealed.MAGIC)))
        size = sealed.plaintext_size(f, file.size) if is_segmented else None
    start, status = 0, 200
    asked = request.headers.get("Range", "")
    if asked and is_segmented and size is not None:
        match = RANGE.match(asked.strip())
        if match is None:
            return JsonResponse({"detail": "Only an open-ended range ('bytes=N-') is served.",
                                 "code": "range"}, status=416)
        start = int(match.group(1))
        if start >= size and size > 0:
            response = JsonResponse({"detail": f"The file has {size} bytes.", "code": "range"},
                                    status=416)
            response["Content-Range"] = f"bytes */{size}"
            return response
        status = 206 if start else 200

    def body():
        if not is_segmented:
            yield from stored_chunks(file)
            return
        key, key_id = sealed_key()
        with file.open("rb") as f:
            yield from sealed.unseal_stream(f, key=key, key_id=key_id, start=start)

    response = StreamingHttpResponse(body(), status=status, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Content-Sha256"] = sha256
    if size is not None:
        response["Accept-Ranges"] = "bytes"
        response["Content-Length"] = str(size - start)
        if status == 206:
            response["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
    return response


@csrf_exempt
@require_http_methods(["GET"])
def bundle(request, assignment_id: int):
    """The job's code bundle (its plaintext: the agent checks it against the SHA-256 in its
    assignment.start message)."""
    try:
        assignment = _assignment(request, assignment_id)
    except MarketError as exc:
        return _error(exc)
    code = assignment.job.bundle
    if code is None:
        return JsonResponse({"detail": "This job trains a template, not a code bundle.",
                             "code": "not_found"}, status=404)
    suffix = {"py": "py", "zip": "zip", "tar": "tar"}[code.kind]
    return stored_file_response(request, code.file, sha256=code.sha256,
                                filename=f"bundle-{code.pk}.{suffix}")


@csrf_exempt
@require_http_methods(["GET"])
def dataset(request, assignment_id: int):
    """The job's uploaded dataset (a CSV or a zip), streamed; a large one resumable."""
    try:
        assignment = _assignment(request, assignment_id)
    except MarketError as exc:
        return _error(exc)
    ds = assignment.job.dataset
    if ds is None:
        return JsonResponse({"detail": "This job uses a bundled sample or no dataset."}, status=404)
    try:
        with ds.file.open("rb") as f:
            segmented = sealed.is_sealed(f.read(len(sealed.MAGIC)))
        if not segmented:  # a single-request CSV (at most DATASET_MAX_BYTES): sent whole
            plain, filename = transfers.assignment_dataset(assignment)
            return FileResponse(io.BytesIO(plain), as_attachment=True, filename=filename,
                                content_type="text/csv")
    except MarketError as exc:
        return _error(exc)
    return stored_file_response(request, ds.file, sha256=ds.sha256,
                                filename=f"dataset-{ds.pk}.{ds.kind}",
                                content_type="text/csv" if ds.kind == "csv" else "application/zip")


@csrf_exempt
@require_http_methods(["GET"])
def weights(request, assignment_id: int):
    """The job's input weights (a fine-tune's state_dict), streamed; resumable. The agent
    checks it against the SHA-256 in its assignment.start message."""
    try:
        assignment = _assignment(request, assignment_id)
    except MarketError as exc:
        return _error(exc)
    start = assignment.job.weights
    if start is None:
        return JsonResponse({"detail": "This job starts from no weights file.",
                             "code": "not_found"}, status=404)
    return stored_file_response(request, start.file, sha256=start.sha256,
                                filename=f"weights-{start.pk}.pt")
