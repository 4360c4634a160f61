"""What the API's views share: the error responses they document, the id pattern, the
authentication, and Idempotency-Key handling (services/idempotency.py)."""

import hashlib
import json
from collections.abc import Callable

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.response import Response

from ..services import idempotency
from . import serializers as s

ERRORS = {code: OpenApiResponse(s.ErrorSerializer, description=text) for code, text in {
    400: "Invalid input; `field` names it.", 401: "Not authenticated.",
    403: "Not allowed for your organization.", 404: "Not found (or not yours).",
    409: "Not possible in the object's current state.", 413: "The body is too large.",
    422: "This Idempotency-Key was used for a different request.",
    429: "Too many attempts; `Retry-After` says when to try again.",
    503: "The chain node did not answer or refused the transaction; nothing was paid.",
}.items()}
ID = r"\d{1,18}"
# Token first: its WWW-Authenticate header makes "not logged in" a 401, not a 403.
AUTH = [TokenAuthentication, SessionAuthentication]




def _errors(*codes: int) -> dict:
    return {code: ERRORS[code] for code in codes}


# --- Idempotency-Key ------------------------------------------------------------------

IDEMPOTENCY_HEADER = OpenApiParameter(
    idempotency.HEADER, {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY,
                         "pattern": r"^[ -~]*[!-~][ -~]*$"}, OpenApiParameter.HEADER, required=False,
    description="Your unique key for this request (a UUID). Sent again within 24 hours with "
                "the same request, it returns the first response (with `Idempotent-Replayed: "
                "true`) and creates nothing; with a different request it is refused (422).")


def _idempotent(request, payload: Callable[[], bytes], respond: Callable[[], Response]) -> Response:
    """`respond()` once per Idempotency-Key (services/idempotency.py); without the header,
    just `respond()`."""
    raw = request.headers.get(idempotency.HEADER)
    if raw is None:
        return respond()
    key = idempotency.idempotency_key_check(raw)
    fingerprint = idempotency.request_fingerprint(method=request.method, path=request.path,
                                                  body=payload())

    def call() -> tuple[int, object]:
        response = respond()
        return response.status_code, response.data

    code, body, replayed = idempotency.idempotent_call(user=request.user, key=key,
                                                       fingerprint=fingerprint, call=call)
    response = Response(body, status=code)
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def _json_payload(data) -> bytes:
    # The parsed body, canonical: the same JSON sent with other spacing or key order is the
    # same request.
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def _multipart_payload(data) -> bytes:
    # A multipart body's boundary changes with every send: its fields and each file's
    # name and SHA-256 stand for it.
    parts: dict[str, list] = {}
    for name in sorted(data.keys()):
        for value in data.getlist(name):
            if hasattr(value, "chunks"):
                digest = hashlib.sha256()
                for chunk in value.chunks():
                    digest.update(chunk)
                value.seek(0)
                value = {"file": value.name, "sha256": digest.hexdigest()}
            parts.setdefault(name, []).append(value)
    return _json_payload(parts)
