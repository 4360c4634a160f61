"""What the page views share: organization guards and htmx detection."""

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from ..errors import PermissionDenied
from ..selectors.accounts import require_consumer, require_provider

GUARDS: dict[str, Callable] = {"consumer": require_consumer, "provider": require_provider}


def org_required(kind: str):
    """Log-in required, and membership of an organization of `kind`; the organization is
    handed to the view as `request.org`. The wrong kind sees a 403 page that says why."""
    guard = GUARDS[kind]

    def decorate(view):
        @wraps(view)
        @login_required
        def wrapped(request, *args, **kwargs):
            try:
                request.org = guard(request.user)
            except PermissionDenied as exc:
                return render(request, "403.html", {"message": exc.message, "kind": kind},
                              status=403)
            return view(request, *args, **kwargs)

        return wrapped

    return decorate


def is_htmx(request) -> bool:
    """An htmx swap (not a history restore, which needs the whole page)."""
    return (request.headers.get("HX-Request") == "true"
            and request.headers.get("HX-History-Restore-Request") != "true")
