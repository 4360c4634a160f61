"""Resumable, chunked uploads of datasets and code bundles (docs/api.md, "Uploads"), in the
manner of tus: create an upload with the file's size and SHA-256, send its bytes in PATCH
requests at `Upload-Offset`, ask the offset after a break (HEAD or GET) and go on from
there, then finish: the SHA-256 is checked end to end and the file becomes a dataset or a
bundle.

The bytes so far are in a partial file under MEDIA_ROOT/uploads/ (plaintext until the
upload finishes, when it is encrypted into storage and deleted). A chunk is written whole or
not at all: the offset moves only once a chunk is on disk (fsync), and a chunk cut short
is cut from the partial file again. One request writes an upload at a time: a second PATCH
while one is in progress is refused (409), as is a PATCH at another offset than the
upload's.
"""

import hashlib
import os
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from ..errors import Conflict, MarketError, PermissionDenied
from ..models import CodeBundle, Dataset, Organization, Upload
from ..text import clean_name
from . import archives, bundles, datasets, sealed, weights

SHA256 = re.compile(r"[0-9a-f]{64}")
PIECE = 1024 * 1024
LOCK_TTL_S = 15 * 60
DATASET_SUFFIXES = (".csv", ".zip", *weights.SUFFIXES)


class UploadTooLarge(MarketError):
    status_code = 413

    def __init__(self, message: str, *, field: str = "size_bytes"):
        super().__init__(message, field=field, code="too_large")


def partial_path(upload: Upload) -> Path:
    return Path(settings.MEDIA_ROOT) / "uploads" / f"{upload.pk}.part"


def _mb(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1_048_576:.1f} MB"


def upload_create(*, owner: Organization, actor, purpose: str, name: str, size: int,
                  sha256: str, options: dict[str, Any] | None = None) -> Upload:
    """Open an upload, refusing up front what could not be accepted at the end: a name of
    the wrong kind, a size over the limit or the organization's quota, bad declarations."""
    if not owner.is_consumer:
        raise PermissionDenied("Only consumer organizations upload datasets and code bundles.")
    if owner.is_suspended:
        raise PermissionDenied("Your organization is suspended; contact support.")
    if purpose not in Upload.Purpose.values:
        raise MarketError("purpose is 'dataset' or 'bundle'.", field="purpose")
    name = clean_name(os.path.basename(name or ""))
    if not name or len(name) > datasets.MAX_NAME:
        raise MarketError(f"Name the file (1 to {datasets.MAX_NAME} characters, with its "
                          "extension).", field="name")
    sha256 = (sha256 or "").strip().lower()
    if not SHA256.fullmatch(sha256):
        raise MarketError("sha256 is the file's SHA-256 as 64 hexadecimal digits.", field="sha256")
    if not isinstance(size, int) or size < 1:
        raise MarketError("size_bytes is the file's size in bytes (1 or more).", field="size_bytes")
    options = dict(options or {})
    kept: dict[str, Any]
    if purpose == Upload.Purpose.DATASET:
        if not name.lower().endswith(DATASET_SUFFIXES):
            raise MarketError("A dataset is a .csv file or a .zip of files (or a fine-tune's "
                              "weights, a .pt state_dict); name it so.",
                              field="name", code="invalid_dataset")
        limit = weights.max_bytes() if weights.is_weights_name(name) else settings.UPLOAD_MAX_BYTES
        kept = {"label_column": str(options.get("label_column") or "").strip()[:128]}
    else:
        bundles.bundle_kind(name)
        limit = settings.BUNDLE_MAX_BYTES
        kept = {"runtime": str(options.get("runtime") or "").strip(),
                "entry": str(options.get("entry") or "").strip(),
                "params_schema": options.get("params_schema")}
        if kept["runtime"]:
            bundles.runtimes.validate_runtime(kept["runtime"])
        if kept["entry"]:
            bundles.entry_check(kept["entry"] if ":" in kept["entry"] else f"task:{kept['entry']}")
        if kept["params_schema"] not in (None, "", {}):
            kept["params_schema"] = bundles.params_schema_check(kept["params_schema"])
    if size > limit:
        raise UploadTooLarge(f"The file is {_mb(size)}; a {purpose}'s limit is {_mb(limit)}.")
    uploads_expire(owner=owner)
    with transaction.atomic():
        # Serialises one organization's creates: two cannot both take the quota's last bytes.
        Organization.objects.select_for_update().filter(pk=owner.pk).first()
        datasets.storage_quota_check(owner, size)
        upload = Upload.objects.create(
            owner=owner, created_by=actor if getattr(actor, "pk", None) else None,
            purpose=purpose, name=name, size_bytes=size, sha256=sha256, options=kept)
    path = partial_path(upload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return upload


def _lock_key(upload: Upload) -> str:
    return f"computemesh:upload-writing:{upload.pk}"


def upload_write(*, upload: Upload, offset: int, length: int, read) -> int:
    """Append `length` bytes from `read(n)` at `offset`; return the new offset."""
    if upload.status != Upload.Status.OPEN:
        raise Conflict("This upload is complete; nothing more can be written to it.",
                       code="upload_complete")
    if offset != upload.offset:
        raise Conflict(f"Upload-Offset {offset} is not this upload's offset ({upload.offset}); "
                       "ask for the offset (HEAD) and send from there.", code="offset_mismatch")
    if length < 0 or upload.offset + length > upload.size_bytes:
        raise MarketError(f"This chunk would take the upload past its declared size of "
                          f"{upload.size_bytes} bytes.", field="Content-Length", code="too_long")
    if length > settings.UPLOAD_CHUNK_MAX_BYTES:
        raise UploadTooLarge(f"A chunk is at most {_mb(settings.UPLOAD_CHUNK_MAX_BYTES)}.",
                             field="Content-Length")
    token = uuid.uuid4().hex
    if not cache.add(_lock_key(upload), token, timeout=LOCK_TTL_S):
        raise Conflict("Another request is writing to this upload; wait for it to end, then ask "
                       "for the offset.", code="upload_busy")
    path = partial_path(upload)
    try:
        current = Upload.objects.get(pk=upload.pk)  # the offset may have moved before the lock
        if current.offset != offset:
            raise Conflict(f"Upload-Offset {offset} is not this upload's offset "
                           f"({current.offset}).", code="offset_mismatch")
        with open(path, "r+b" if path.exists() else "w+b") as f:
            # What a chunk cut short (or a crash before the offset moved) left is dropped.
            f.truncate(offset)
            f.seek(offset)
            left = length
            try:
                while left:
                    piece = read(min(PIECE, left))
                    if not piece:
                        break
                    f.write(piece)
                    left -= len(piece)
                if left:
                    raise MarketError(f"The chunk ended after {length - left} of the "
                                      f"{length} bytes its Content-Length declared; nothing of "
                                      "it was kept. Send it again from the offset.",
                                      field="body", code="incomplete_chunk")
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                f.truncate(offset)
                raise
        moved = Upload.objects.filter(pk=upload.pk, offset=offset, status=Upload.Status.OPEN) \
            .update(offset=offset + length)
        if moved != 1:
            raise Conflict("This upload changed while the chunk was written; ask for the offset.",
                           code="offset_mismatch")
        upload.offset = offset + length
        return upload.offset
    finally:
        if cache.get(_lock_key(upload)) == token:
            cache.delete(_lock_key(upload))


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            digest.update(piece)
    return digest.hexdigest()


def upload_finish(*, upload: Upload, actor):
    """Check the whole file's SHA-256 and turn it into a dataset or a bundle; return
    (object, created). Finishing a finished upload returns its object again."""
    if upload.status == Upload.Status.COMPLETE:
        if upload.purpose == Upload.Purpose.DATASET:
            return Dataset.objects.filter(pk=upload.result_id or 0, owner=upload.owner).first(), False
        return CodeBundle.objects.filter(pk=upload.result_id or 0, owner=upload.owner).first(), False
    if upload.offset != upload.size_bytes:
        raise Conflict(f"The upload has {upload.offset} of its {upload.size_bytes} bytes; send "
                       "the rest before finishing it.", code="upload_incomplete")
    path = partial_path(upload)
    if not cache.add(_lock_key(upload), "finishing", timeout=LOCK_TTL_S):
        raise Conflict("Another request is writing to this upload.", code="upload_busy")
    try:
        actual = _sha256_of(path)
        if actual != upload.sha256:
            # The bytes are not the file that was declared: nothing to resume from.
            upload_discard(upload=upload)
            raise MarketError(f"The uploaded bytes' SHA-256 is {actual}, not the {upload.sha256} "
                              "declared: the file changed or was damaged on the way. The upload "
                              "was discarded; start again.", field="sha256", code="sha256_mismatch")
        try:
            if upload.purpose == Upload.Purpose.DATASET:
                result, created = _dataset_from(upload, path, actor), True
            else:
                o = upload.options
                result, created = bundles.bundle_store(
                    owner=upload.owner, actor=actor, path=str(path), name=upload.name,
                    sha256=upload.sha256, size=upload.size_bytes, runtime=o.get("runtime", ""),
                    entry=o.get("entry", ""), params_schema=o.get("params_schema"))
        except MarketError as exc:
            if exc.status_code != 400:
                raise
            # The bytes are final and refused: keeping them would only hold the quota.
            upload_discard(upload=upload)
            raise MarketError(f"{exc.message} The upload was discarded; fix the file and upload "
                              "it again.", field=exc.field, code=exc.code) from None
        Upload.objects.filter(pk=upload.pk).update(status=Upload.Status.COMPLETE, result_id=result.pk)
        upload.status, upload.result_id = Upload.Status.COMPLETE, result.pk
        path.unlink(missing_ok=True)
        return result, created
    finally:
        cache.delete(_lock_key(upload))


def _dataset_from(upload: Upload, path: Path, actor):
    kind = "zip" if upload.name.lower().endswith(".zip") else "csv"
    kind = "weights" if weights.is_weights_name(upload.name) else kind
    header: list[str] = []
    rows = entries = 0
    if kind == "zip":
        entries = archives.zip_inspect(str(path)).entries
    elif kind == "weights":  # `entries` counts its tensors
        entries = weights.weights_inspect(str(path))
    else:
        with open(path, "rb") as f:
            header, rows = datasets.csv_inspect_file(
                f, label_column=upload.options.get("label_column", ""))
    dataset = Dataset(owner=upload.owner, created_by=actor if getattr(actor, "pk", None) else None,
                      name=upload.name, size_bytes=upload.size_bytes, rows=rows, columns=header,
                      sha256=upload.sha256, kind=kind, entries=entries)
    stored = f"datasets/uploads/{uuid.uuid4().hex}.{kind}.enc"  # a random stored name
    target = Path(dataset.file.storage.path(stored))
    target.parent.mkdir(parents=True, exist_ok=True)
    key, key_id = datasets.sealed_key()
    with open(path, "rb") as src, open(target, "wb") as dst:
        sealed.seal_stream(src, dst, key=key, key_id=key_id)
    dataset.file.name = stored
    try:
        with transaction.atomic():
            dataset.save()
    except Exception:
        target.unlink(missing_ok=True)
        raise
    return dataset


def uploads_expire(*, owner: Organization) -> int:
    """Discard the organization's uploads untouched for UPLOAD_EXPIRE_S (unfinished ones
    with their bytes; finished ones are only rows). Returns how many."""
    cutoff = timezone.now() - timedelta(seconds=settings.UPLOAD_EXPIRE_S)
    stale = list(Upload.objects.filter(owner=owner, updated_at__lt=cutoff))
    for upload in stale:
        partial_path(upload).unlink(missing_ok=True)
    Upload.objects.filter(pk__in=[u.pk for u in stale]).delete()
    return len(stale)


def upload_discard(*, upload: Upload) -> None:
    """Abandon an upload: its partial file and its row (its quota is freed)."""
    partial_path(upload).unlink(missing_ok=True)
    Upload.objects.filter(pk=upload.pk, status=Upload.Status.OPEN).delete()
