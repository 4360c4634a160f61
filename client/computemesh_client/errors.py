"""Typed exceptions. Every API error carries the API's one error shape (docs/api.md):
`{"detail", "field", "code", "errors"?}`; the class says what kind of refusal it was and
`exit_code` is what the `computemesh` command exits with for it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The command's documented exit codes.
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_NETWORK = 0, 1, 2, 3, 4


class ComputeMeshError(Exception):
    """Anything the client raises."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NetworkError(ComputeMeshError):
    """The server could not be reached, or the connection broke (nothing was answered)."""

    exit_code = EXIT_NETWORK


class APIError(ComputeMeshError):
    """The server answered with an error status."""

    status_code = 0

    def __init__(self, status_code: int, body: dict[str, Any] | None = None, *,
                 method: str = "", path: str = "", retry_after: float | None = None):
        body = body if isinstance(body, dict) else {}
        detail = str(body.get("detail") or f"HTTP {status_code}")
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.field: str | None = body.get("field")
        self.code: str = str(body.get("code") or "error")
        self.errors: dict[str, list[str]] = body.get("errors") or {}
        self.body = body
        self.method, self.path = method, path
        self.retry_after = retry_after

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status_code, "detail": self.detail, "field": self.field,
                "code": self.code, **({"errors": self.errors} if self.errors else {})}


class ValidationError(APIError):
    """400: invalid input; `field` names it. 422: an Idempotency-Key reused for a different
    request (`field` is "Idempotency-Key")."""

    exit_code = EXIT_USAGE


class AuthenticationError(APIError):
    """401, or a username and password the server refused."""


class PermissionDenied(APIError):
    """403: your organization may not do that."""


class NotFound(APIError):
    """404: not there, or not yours."""


class Conflict(APIError):
    """409: not possible in the object's current state."""


class PayloadTooLarge(APIError):
    """413."""

    exit_code = EXIT_USAGE


class RateLimited(APIError):
    """429: `retry_after` seconds until the next try."""


class ServerError(APIError):
    """5xx: the server (or the chain node behind it, 503) failed; nothing was done."""

    exit_code = EXIT_NETWORK


class JobFailed(ComputeMeshError):
    """A watched job ended without completing (failed, cancelled or refunded)."""

    exit_code = EXIT_JOB_FAILED

    def __init__(self, message: str, job: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.job = dict(job or {})


_BY_STATUS: dict[int, type[APIError]] = {
    400: ValidationError, 401: AuthenticationError, 403: PermissionDenied, 404: NotFound,
    409: Conflict, 413: PayloadTooLarge, 422: ValidationError, 429: RateLimited,
}


def error_for(status_code: int, body: Any, **kwargs: Any) -> APIError:
    cls = _BY_STATUS.get(status_code) or (ServerError if status_code >= 500 else APIError)
    if status_code == 400 and isinstance(body, dict) and body.get("code") == "authorization":
        cls = AuthenticationError  # the token endpoint's "wrong username or password"
    return cls(status_code, body if isinstance(body, dict) else None, **kwargs)
