"""Uploaded training data: CSV files checked before they are stored, so that a job never
starts on a file the runtime cannot read."""

import base64
import contextlib
import csv
import hashlib
import io
import os
import secrets
import tempfile
import uuid
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Sum

from ..errors import Conflict, MarketError, PermissionDenied
from ..models import CodeBundle, Dataset, Job, Organization, Upload
from ..text import clean_name
from . import sealed
from .audit import audit_record

MIN_ROWS = 10
MAX_COLUMNS = 500
MAX_CELL = 10_000
MAX_NAME = 200


def _fail(message: str) -> MarketError:
    return MarketError(message, field="file", code="invalid_dataset")


# --- encryption at rest -------------------------------------------------------------------
# A stored dataset is MAGIC, the key's id (4 bytes of its SHA-256), a 12-byte nonce and the
# AES-256-GCM ciphertext with its tag. A CSV cannot start with MAGIC (csv refuses NUL bytes,
# so csv_inspect never accepted one), which tells files stored before encryption apart: they
# are served as they are. The files are at most DATASET_MAX_BYTES (20 MB), so they are
# encrypted and decrypted whole; a streamed GCM would hand out bytes before the tag is checked.
MAGIC = b"CMDS1\0"


def _key() -> bytes:
    if settings.DATASET_ENCRYPTION_KEY:
        return base64.urlsafe_b64decode(settings.DATASET_ENCRYPTION_KEY)
    return hashlib.sha256(b"computemesh datasets\0" + settings.SECRET_KEY.encode()).digest()


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:4]


def dataset_encrypt(data: bytes) -> bytes:
    key, nonce = _key(), secrets.token_bytes(12)
    header = MAGIC + _key_id(key)
    return header + nonce + AESGCM(key).encrypt(nonce, data, header)


def dataset_decrypt(stored: bytes) -> bytes:
    if not stored.startswith(MAGIC):
        return stored  # stored before datasets were encrypted
    key = _key()
    at = len(MAGIC) + 4
    header, nonce, body = stored[:at], stored[at:at + 12], stored[at + 12:]
    if header[len(MAGIC):] != _key_id(key):
        raise MarketError("This dataset was encrypted with another DATASET_ENCRYPTION_KEY.",
                          code="dataset_key")
    try:
        return AESGCM(key).decrypt(nonce, body, header)
    except InvalidTag:
        raise MarketError("This dataset's stored file is damaged (it fails its integrity check).",
                          code="dataset_damaged") from None


def sealed_key() -> tuple[bytes, bytes]:
    """The key and key id that large files (services/sealed.py) are encrypted with."""
    key = _key()
    return key, _key_id(key)


def stored_chunks(file) -> Iterator[bytes]:
    """The plaintext of a stored dataset or bundle file, in pieces: whole-file encrypted
    (a single-request CSV), segmented (a resumable upload), or plain (stored before
    encryption)."""
    with file.open("rb") as f:
        head = f.read(len(sealed.MAGIC))
        f.seek(0)
        if sealed.is_sealed(head):
            key, key_id = sealed_key()
            yield from sealed.unseal_stream(f, key=key, key_id=key_id)
        else:
            yield dataset_decrypt(f.read())


def dataset_chunks(dataset: Dataset) -> Iterator[bytes]:
    return stored_chunks(dataset.file)


def dataset_read(dataset: Dataset) -> bytes:
    """The dataset's CSV as uploaded (small datasets only: it is read whole)."""
    return b"".join(dataset_chunks(dataset))


@contextlib.contextmanager
def dataset_plain_path(dataset: Dataset) -> Iterator[str]:
    """A private temporary file holding the dataset (a CSV, or a zip), for code that reads a
    path (the verify worker's training runtime); deleted when the block ends."""
    with tempfile.NamedTemporaryFile(prefix="dataset-", suffix=f".{dataset.kind or 'csv'}") as f:
        for chunk in dataset_chunks(dataset):
            f.write(chunk)
        f.flush()
        yield f.name


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_inspect(data: bytes, *, label_column: str = "") -> tuple[list[str], int]:
    """Return (header, data rows) of a CSV file, or raise MarketError saying what is wrong.
    With `label_column`, also check what a classifier needs: that column holds at least two
    classes and every other column is numeric."""
    if not data.strip():
        raise _fail("The file is empty.")
    if b"\x00" in data:
        raise _fail("This is not a CSV text file (it contains binary data).")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(f"The file is not UTF-8 text (byte {exc.start} cannot be read). "
                    "Save it as CSV UTF-8.") from None
    return _csv_inspect_lines(io.StringIO(text, newline=""), label_column=label_column)


def _text_lines(f) -> Iterator[str]:
    """A binary file's lines as UTF-8 text, refusing binary data, read a line at a time."""
    text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
    try:
        for line in text:
            if "\x00" in line:
                raise _fail("This is not a CSV text file (it contains binary data).")
            yield line
    except UnicodeDecodeError:
        raise _fail("The file is not UTF-8 text. Save it as CSV UTF-8.") from None
    finally:
        text.detach()


def csv_inspect_file(f, *, label_column: str = "") -> tuple[list[str], int]:
    """csv_inspect for a file too large to read whole (a resumable upload)."""
    head = f.read(4096)
    f.seek(0)
    if not head.strip():
        raise _fail("The file is empty.")
    return _csv_inspect_lines(_text_lines(f), label_column=label_column)


def _csv_inspect_lines(lines, *, label_column: str) -> tuple[list[str], int]:
    # Commas only: the training runtime reads comma-separated files.
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise _fail("The file is empty.")
        header = [h.strip() for h in header]
        if len(header) > MAX_COLUMNS:
            raise _fail(f"The file has {len(header)} columns; at most {MAX_COLUMNS} are allowed.")
        if len(header) < 2:
            raise _fail("This does not look like CSV: the first row has one column. Separate "
                        "columns with commas.")
        if any(not h for h in header) or all(_is_number(h) for h in header):
            raise _fail("The first row must be a header that names every column.")
        if len(set(header)) != len(header):
            dupes = sorted({h for h in header if header.count(h) > 1})
            raise _fail(f"Column names must be unique; repeated: {', '.join(dupes)[:200]}.")
        if any(len(h) > 128 for h in header):
            raise _fail("Column names are at most 128 characters.")
        label = -1
        if label_column:
            if label_column not in header:
                raise MarketError(f"There is no column '{label_column[:128]}'; the columns are "
                                  f"{', '.join(header[:20])[:300]}.", field="label_column")
            label = header.index(label_column)
        classes: set[str] = set()
        rows = 0
        for record in reader:
            if not record:
                continue  # blank line
            if len(record) != len(header):
                raise _fail(f"Line {reader.line_num} has {len(record)} columns; the header has "
                            f"{len(header)}. Every row needs the same number of columns.")
            if any(len(cell) > MAX_CELL for cell in record):
                raise _fail(f"Line {reader.line_num} has a value longer than {MAX_CELL} "
                            "characters.")
            if label >= 0:
                classes.add(record[label].strip())
                bad = next((header[i] for i, cell in enumerate(record)
                            if i != label and not _is_number(cell)), None)
                if bad is not None:
                    raise _fail(f"Line {reader.line_num}: column '{bad}' is not a number; every "
                                "column but the label must be numeric.")
            rows += 1
    except csv.Error as exc:
        raise _fail(f"This is not valid CSV (line {reader.line_num}: {exc}).") from None
    if rows < MIN_ROWS:
        raise _fail(f"The file has {rows} data rows; at least {MIN_ROWS} are needed to train "
                    "and evaluate.")
    if label >= 0 and len(classes) < 2:
        raise MarketError(f"The label column '{label_column}' has one class only; a classifier "
                          "needs at least two.", field="label_column")
    return header, rows


def dataset_upload(*, owner: Organization, actor, uploaded_file, name: str = "",
                   label_column: str = "") -> Dataset:
    """Check an uploaded CSV file and store it for the owner's jobs."""
    if not owner.is_consumer:
        raise PermissionDenied("Only consumer organizations can upload datasets.")
    if owner.is_suspended:
        raise PermissionDenied("Your organization is suspended; contact support.")
    size = uploaded_file.size or 0
    limit = settings.DATASET_MAX_BYTES
    if size > limit:
        raise _fail(f"The file is {size / 1_048_576:.1f} MB; the limit is "
                    f"{limit / 1_048_576:.1f} MB.")
    storage_quota_check(owner, size)
    name = clean_name(name) or clean_name(os.path.basename(uploaded_file.name or ""))
    name = name or "dataset.csv"
    if len(name) > MAX_NAME:
        raise MarketError(f"Dataset names are at most {MAX_NAME} characters.", field="name")
    uploaded_file.seek(0)
    data = uploaded_file.read(limit + 1)
    if len(data) > limit:
        raise _fail(f"The file is larger than the limit of {limit / 1_048_576:.1f} MB.")
    header, rows = csv_inspect(data, label_column=(label_column or "").strip())
    digest = hashlib.sha256(data).hexdigest()
    dataset = Dataset(owner=owner, created_by=actor if getattr(actor, "pk", None) else None,
                      name=name, size_bytes=len(data), rows=rows, columns=header, sha256=digest)
    # A random stored name: the client's file name is only shown, never used as a path.
    # Encrypted at rest (above); size_bytes and sha256 describe the CSV itself.
    dataset.file.save(f"{uuid.uuid4().hex}.csv.enc", ContentFile(dataset_encrypt(data)), save=False)
    try:
        with transaction.atomic():
            dataset.save()
    except Exception:
        dataset.file.delete(save=False)
        raise
    return dataset


def refuse_while_used(users, *, what: str, code: str) -> None:
    """A stored input (a dataset, a code bundle) is not deleted while a job that has not
    finished uses it: a 409 naming up to five of them."""
    busy = list(users.exclude(status__in=Job.Status.TERMINAL).order_by("pk")
                .values_list("pk", flat=True)[:6])
    if busy:
        shown = ", ".join(f"#{pk}" for pk in busy[:5]) + (", …" if len(busy) > 5 else "")
        raise Conflict(f"{what} is used by job{'s' if len(busy) > 1 else ''} "
                       f"{shown} that {'have' if len(busy) > 1 else 'has'} not finished; "
                       "cancel them or wait for them to end, then delete it.", code=code)


def dataset_delete(*, dataset: Dataset, actor) -> None:
    """Delete a dataset and its stored file. Refused (409) while a job that has not
    finished uses it; finished jobs keep its id in `dataset_ref` and lose the link."""
    with transaction.atomic():
        # Locked: a job submitted meanwhile waits on the row (its foreign key), then fails.
        dataset = Dataset.objects.select_for_update().get(pk=dataset.pk)
        users = Job.objects.filter(dataset=dataset)
        starts = Job.objects.filter(weights=dataset)  # a weights file: the fine-tunes from it
        refuse_while_used(users | starts, what=f"Dataset #{dataset.pk}", code="dataset_in_use")
        users.update(dataset=None)
        starts.update(weights=None)
        name, storage = dataset.file.name, dataset.file.storage
        audit_record(actor=actor, action="dataset.delete", obj=dataset,
                     message=f"Deleted dataset '{dataset.name}' ({dataset.rows} rows).")
        dataset.delete()
        # The file goes once the row is gone for good (a rollback keeps both).
        if name:
            transaction.on_commit(lambda: storage.delete(name))


# --- storage quota --------------------------------------------------------------------------

class QuotaExceeded(MarketError):
    status_code = 413

    def __init__(self, message: str):
        super().__init__(message, field="size_bytes", code="quota_exceeded")


def storage_used(owner: Organization) -> int:
    """Bytes an organization holds: its datasets, its code bundles and what its open
    uploads were declared to be."""
    total = 0
    for qs in (Dataset.objects.filter(owner=owner), CodeBundle.objects.filter(owner=owner),
               Upload.objects.filter(owner=owner, status=Upload.Status.OPEN)):
        total += qs.aggregate(n=Sum("size_bytes"))["n"] or 0
    return total


def storage_quota_check(owner: Organization, size: int) -> None:
    quota = settings.ORG_STORAGE_QUOTA_BYTES
    used = storage_used(owner)
    if used + size > quota:
        raise QuotaExceeded(
            f"This would take your organization's storage to {_gb(used + size)}, over its quota "
            f"of {_gb(quota)} ({_gb(used)} in use by datasets, code bundles and unfinished "
            "uploads). Delete some, or ask for a larger quota.")


def _gb(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1_048_576:.1f} MB"
