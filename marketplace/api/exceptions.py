"""One exception handler for the whole API: every error is a JSON object

    {"detail": "<a sentence a person can act on>", "field": "<input at fault>" | null,
     "code": "<machine-readable>"}

plus `errors` ({field: [messages]}) for input validation, and for a domain error that
found several problems at once. Domain errors (MarketError) come from the services;
anything else unexpected stays a 500 so that it gets fixed.
"""

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.http import Http404, JsonResponse
from django.views.defaults import bad_request, page_not_found, server_error
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from ..errors import MarketError

logger = logging.getLogger(__name__)


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """{"a": {"b": ["msg"]}} -> {"a.b": ["msg"]}; list items by index ("regions.2")."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = str(key) if key != "non_field_errors" else ""
            out.update(_flatten(value, f"{prefix}.{name}" if prefix and name else prefix or name))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            out.setdefault(prefix, []).extend(str(item) for item in detail)
        else:
            for i, item in enumerate(detail):
                if item:
                    out.update(_flatten(item, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out.setdefault(prefix, []).append(str(detail))
    return out


def _first_code(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    while isinstance(codes, dict | list) and codes:
        codes = next(iter(codes.values())) if isinstance(codes, dict) else codes[0]
    return codes if isinstance(codes, str) else "invalid"


def _validation_body(exc: exceptions.ValidationError) -> dict[str, Any]:
    errors = _flatten(exc.detail)
    field, messages = next(iter(errors.items()), ("", ["Invalid input."]))
    detail = f"{field}: {messages[0]}" if field else messages[0]
    return {"detail": detail, "field": field or None, "code": _first_code(exc),
            "errors": errors}


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, MarketError):
        set_rollback()
        body = {"detail": exc.message, "field": exc.field, "code": exc.code}
        if len(exc.errors) > 1:  # several inputs at fault: as input validation reports them
            errors: dict[str, list[str]] = {}
            for f, m in exc.errors:
                errors.setdefault(f or "", []).append(m)
            body["errors"] = errors
        return Response(body, status=exc.status_code)
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": "The request body is too large.", "field": None,
                         "code": "too_large"}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, SuspiciousOperation):
        # Too many fields or files, a malformed multipart body: the client's fault.
        return Response({"detail": "The request could not be read.", "field": None,
                         "code": "bad_request"}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages})
    if isinstance(exc, IntegrityError):
        # A race the service's own checks could not see (two requests creating the same
        # name at once): the database refused it, so nothing was written.
        logger.warning("API integrity error: %s", exc)
        set_rollback()
        return Response({"detail": "That conflicts with a change made at the same time; "
                                   "reload and try again.", "field": None, "code": "conflict"},
                        status=status.HTTP_409_CONFLICT)
    if isinstance(exc, exceptions.ValidationError):
        response = drf_exception_handler(exc, context)
        if response is not None:
            response.data = _validation_body(exc)
        return response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.APIException):
        detail = exc.detail
        message = str(detail if not isinstance(detail, list | dict) else _flatten(detail))
        response.data = {"detail": message, "field": None, "code": _first_code(exc)}
    return response


# --- Django-level errors under /api/ ---------------------------------------------------
# A URL that no route matches (a non-integer id) or an exception outside DRF answers
# Django's HTML pages; under /api/ they answer the same JSON shape as everything else.

def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def api_aware_not_found(request, exception=None):
    if _is_api(request):
        return JsonResponse({"detail": "Not found.", "field": None, "code": "not_found"},
                            status=404)
    return page_not_found(request, exception)


def api_aware_server_error(request):
    if _is_api(request):
        return JsonResponse({"detail": "Internal server error.", "field": None,
                             "code": "server_error"}, status=500)
    return server_error(request)


def api_aware_bad_request(request, exception=None):
    if _is_api(request):
        return JsonResponse({"detail": "The request could not be read.", "field": None,
                             "code": "bad_request"}, status=400)
    return bad_request(request, exception)
