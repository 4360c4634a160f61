"""The `Idempotency-Key` header on writes that create something (submitting a job,
uploading a dataset): a client that resends a request after a timeout gets the first
answer back instead of a second job. A key is the caller's own (per user) for
IDEMPOTENCY_TTL; the same key with another request is refused, never silently replayed."""

import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..errors import MarketError
from ..models import IdempotencyKey

IDEMPOTENCY_TTL = timedelta(hours=24)
MAX_KEY = 255
HEADER = "Idempotency-Key"


class IdempotencyKeyReused(MarketError):
    status_code = 422

    def __init__(self, message: str):
        super().__init__(message, field=HEADER, code="idempotency_key_reused")


def idempotency_key_check(key: str) -> str:
    """The header's value, or a 400 saying what a key must look like."""
    key = key.strip()
    if not key or len(key) > MAX_KEY or not key.isascii() or not key.isprintable():
        raise MarketError(f"{HEADER} must be 1 to {MAX_KEY} printable ASCII characters "
                          "(a UUID is a good choice).", field=HEADER, code="invalid")
    return key


def request_fingerprint(*, method: str, path: str, body: bytes) -> str:
    """SHA-256 of method, path and body, each length-prefixed so that no two differ only
    in where one ends and the next begins."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def _stored(*, user, key: str, fingerprint: str) -> IdempotencyKey | None:
    row = IdempotencyKey.objects.filter(
        user=user, key=key, created_at__gte=timezone.now() - IDEMPOTENCY_TTL).first()
    if row is not None and row.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            f"This {HEADER} was used for a different request in the last "
            f"{int(IDEMPOTENCY_TTL.total_seconds() // 3600)} hours; send a new key for a new "
            "request.")
    return row


def idempotent_call(*, user, key: str, fingerprint: str,
                    call: Callable[[], tuple[int, Any]]) -> tuple[int, Any, bool]:
    """Run `call` (which returns the response's status and JSON body) once per key: a
    repeat returns the stored (status, body) and True. Only successful answers are kept:
    a refused request may be corrected and sent again under its key.

    `call` runs in the same transaction as the key's insert, so that two requests racing
    with one key cannot both create: the second waits on the key's unique index, fails,
    is rolled back (its job with it), and answers the first one's response."""
    row = _stored(user=user, key=key, fingerprint=fingerprint)
    if row is not None:
        return row.response_status, row.response_body, True
    try:
        with transaction.atomic():
            # The user's expired keys go (this one among them: it may be used again), which
            # keeps the table to a day of keys per user without a periodic task.
            IdempotencyKey.objects.filter(
                user=user, created_at__lt=timezone.now() - IDEMPOTENCY_TTL).delete()
            status, body = call()
            if 200 <= status < 300:
                IdempotencyKey.objects.create(user=user, key=key, fingerprint=fingerprint,
                                              response_status=status, response_body=body)
    except IntegrityError:
        row = _stored(user=user, key=key, fingerprint=fingerprint)
        if row is None:
            raise
        return row.response_status, row.response_body, True
    return status, body, False


def idempotency_keys_prune(*, now=None) -> int:
    """Delete keys older than IDEMPOTENCY_TTL; returns how many."""
    cutoff = (now or timezone.now()) - IDEMPOTENCY_TTL
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted
