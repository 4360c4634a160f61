"""One throttle for every way to sign in (the login page and POST /api/v1/auth/token/):
failed attempts are counted per account and per client address in the cache (Redis in
production, so every server process sees the same counts), and a sign-in is refused while
either count is at its limit. The address is the one `client_address` trusts, never a header
the client chose: rotating X-Forwarded-For used to give every guess a fresh allowance."""

import hashlib
import ipaddress
import time

from django.conf import settings
from django.core.cache import cache


def client_address(request) -> str:
    """The client's address: REMOTE_ADDR, or, behind TRUSTED_PROXY_COUNT proxies, the address
    the outermost trusted proxy saw (the N-th from the right in X-Forwarded-For; each proxy
    appends the peer it heard from, so everything to its left is the client's to invent)."""
    remote = request.META.get("REMOTE_ADDR", "") or "unknown"
    trusted = settings.TRUSTED_PROXY_COUNT
    if trusted <= 0:
        return remote
    forwarded = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
    if len(forwarded) < trusted:  # it did not come through every proxy: the header is the client's
        return remote
    candidate = forwarded[-trusted]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:  # a proxy that forwards garbage: count it as the proxy's own address
        return remote


def _keys(username: str, address: str) -> tuple[str, str]:
    account = hashlib.sha256((username or "").strip().lower().encode()).hexdigest()[:32]
    return f"login-fail:account:{account}", f"login-fail:address:{address}"


def _window_key(key: str) -> str:
    return key + ":until"


def login_wait(*, username: str, address: str) -> int:
    """Seconds until this account may be tried from this address again; 0: go ahead."""
    limits = (settings.LOGIN_FAILURES_PER_ACCOUNT, settings.LOGIN_FAILURES_PER_ADDRESS)
    counts = cache.get_many(_keys(username, address))
    wait = 0
    for key, limit in zip(_keys(username, address), limits, strict=True):
        if counts.get(key, 0) >= limit:
            until = cache.get(_window_key(key)) or time.time() + settings.LOGIN_FAILURE_WINDOW_S
            wait = max(wait, int(until - time.time()) + 1)
    return wait


def login_failed(*, username: str, address: str) -> None:
    """Count a failed sign-in against the account and the address; each count is forgotten
    LOGIN_FAILURE_WINDOW_S after its first failure."""
    window = settings.LOGIN_FAILURE_WINDOW_S
    for key in _keys(username, address):
        if cache.add(key, 0, timeout=window):
            cache.set(_window_key(key), time.time() + window, timeout=window)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr: start again
            cache.set(key, 1, timeout=window)


def login_succeeded(*, username: str) -> None:
    """The account's owner got in: its count starts again (the address's does not, so that
    an attacker with an account of its own cannot reset the count of its guesses)."""
    account_key, _ = _keys(username, "")
    cache.delete_many([account_key, _window_key(account_key)])


def wait_message(wait_s: int) -> str:
    minutes = max(1, round(wait_s / 60))
    return (f"Too many failed sign-ins for this account or from this address; try again in "
            f"{minutes} minute{'s' if minutes != 1 else ''}.")
