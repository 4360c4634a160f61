"""Request limits that hold before Django reads a request: how long a URL may be, how large
a body may be (per route: dataset uploads and agent checkpoints are larger than JSON), and
that a body declares its length. Each refusal is a JSON answer in the API's error shape
({detail, field, code}; docs/api.md).

Two layers, because the server reads a request before the application sees it:

- `RequestLimits`, ASGI middleware: answers from the request's headers alone, under any
  ASGI server, without reading the body.
- `daphne_limits()`: daphne (Twisted) reads a whole body into memory and queues it to the
  application before the application can refuse it (a 200 MB upload took the web process
  from 176 to 590 MB), and drops a connection whose request line is longer than 16 KiB
  without answering. It makes Twisted refuse an oversized `Content-Length` as soon as the
  headers are in, and answer 414 to an overlong request line.
"""

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

# Longer than any URL the API or the pages build (their query strings are short), shorter
# than Twisted's line limit (16 KiB), so that the application answers it with JSON.
MAX_URL_BYTES = 8 * 1024
# Room for a multipart body's envelope (boundaries, part headers, the small fields).
ENVELOPE = 64 * 1024
# After refusing a body, keep reading (and dropping) what the client is still sending for
# this long: closing at once resets the connection, and a client that is mid-send loses
# the answer with it.
LINGER_S = 5.0

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def body_limit(path: str) -> int:
    """The largest body, in bytes, that the route at `path` accepts."""
    if path.startswith("/api/v1/agent/"):
        return settings.CHECKPOINT_MAX_BYTES + ENVELOPE
    if path.startswith(("/api/v1/datasets/", "/datasets/")):
        return settings.DATASET_MAX_BYTES + ENVELOPE
    if path.startswith("/api/v1/uploads/"):  # one chunk of a resumable upload
        return settings.UPLOAD_CHUNK_MAX_BYTES + ENVELOPE
    if path.startswith(("/api/v1/bundles/", "/bundles/")):
        return settings.BUNDLE_MAX_BYTES + ENVELOPE
    return small_body_limit()


def _mb(n: int) -> str:
    return f"{n / 1_048_576:.1f} MB"


def refusal(path: str, raw_path_len: int, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
    """(status, code, message) when a request must be refused from its line and headers."""
    if raw_path_len > MAX_URL_BYTES:
        return 414, "uri_too_long", f"The URL is longer than {MAX_URL_BYTES} bytes."
    length = headers.get(b"content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            return 400, "bad_request", "Content-Length is not a number."
        limit = body_limit(path)
        if declared > limit:
            return too_large(_mb(declared), limit)
    elif is_chunked(headers) and body_limit(path) > small_body_limit():
        # Django reads a body only as far as its Content-Length: without one, a chunked
        # upload arrived empty ("No file was submitted"), which misled the client. A small
        # body (JSON, a form) is read here and given its length (RequestLimits); an upload
        # is not held in memory for that.
        return 411, "length_required", ("Send an upload with a Content-Length header "
                                        "(chunked transfer encoding is not accepted here).")
    return None


def is_chunked(headers: dict[bytes, bytes]) -> bool:
    return b"content-length" not in headers and b"chunked" in headers.get(b"transfer-encoding", b"").lower()


def small_body_limit() -> int:
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE + ENVELOPE


def too_large(declared_mb: str, limit: int) -> tuple[int, str, str]:
    return 413, "too_large", (f"The request body ({declared_mb}) is larger than the "
                              f"{_mb(limit)} this address accepts.")


def error_body(status: int, code: str, message: str) -> bytes:
    return json.dumps({"detail": message, "field": None, "code": code}).encode()


class RequestLimits:
    """ASGI middleware for HTTP: refuses from the request line and headers, never reading
    the body."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            raw_len = len(raw) + len(scope.get("query_string", b""))
            headers = dict(scope.get("headers", []))
            refused = refusal(scope["path"], raw_len, headers)
            if refused is None and is_chunked(headers):
                scope, receive, refused = await self._with_length(scope, receive)
            if refused is not None:
                status, code, message = refused
                body = error_body(status, code, message)
                await send({"type": "http.response.start", "status": status, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    async def _with_length(self, scope: Scope, receive: Receive):
        """Read a small chunked body (at most the route's limit) and hand it on with its
        Content-Length, which Django needs to read it at all."""
        limit, parts, size = body_limit(scope["path"]), [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return scope, receive, (400, "bad_request", "The client went away.")
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > limit:
                return scope, receive, too_large(f"over {_mb(limit)}", limit)
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"transfer-encoding"]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return {**scope, "headers": headers}, replay, None


_REASONS = {400: b"Bad Request", 411: b"Length Required", 413: b"Content Too Large",
            414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


def _raw_response(status: int, code: str, message: str) -> bytes:
    body = error_body(status, code, message)
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, _REASONS[status], len(body))) + body


def daphne_limits() -> None:
    """Teach Twisted's HTTP channel (daphne's server) the limits above. Called from
    webapp/asgi.py when daphne has imported Twisted; other servers are left alone."""
    from twisted.web import http

    channel = http.HTTPChannel
    if getattr(channel, "_computemesh_limits", False):
        return

    def refuse(self, status: int, code: str, message: str) -> None:
        from twisted.internet import reactor  # the server's, installed by now

        self.transport.write(_raw_response(status, code, message))
        started = time.monotonic()

        def drop(data: bytes) -> None:
            if time.monotonic() - started > LINGER_S:
                self.transport.loseConnection()

        # Nothing more is parsed or stored; the connection closes once the client stops
        # sending or after LINGER_S.
        self.dataReceived = self.lineReceived = self.rawDataReceived = drop
        self.setTimeout(None)
        reactor.callLater(LINGER_S, self.transport.loseConnection)

    def lineLengthExceeded(self, line: bytes) -> None:
        # Still on the request line: the URL is too long; otherwise one header line is.
        if getattr(self, "_HTTPChannel__first_line", 0):
            refuse(self, 414, "uri_too_long", f"The URL is longer than {MAX_URL_BYTES} bytes.")
        else:
            refuse(self, 431, "headers_too_large", "A request header is too large.")

    original = channel.allHeadersReceived

    def allHeadersReceived(self) -> None:
        req = self.requests[-1]
        path = (self._path or b"").split(b"?", 1)[0].decode("latin-1")
        headers = {k.lower(): v[0] for k, v in req.requestHeaders.getAllRawHeaders() if v}
        refused = refusal(path, 0, headers)  # the URL's length is the application's to check
        if refused is not None:
            refuse(self, *refused)
            return
        if is_chunked(headers) and self._transferDecoder is not None:
            # A small chunked body (the only kind let through): counted as it arrives.
            decoder, limit, received = self._transferDecoder, body_limit(path), 0
            forward = decoder.dataCallback

            def counted(data: bytes) -> None:
                nonlocal received
                received += len(data)
                if received > limit:
                    decoder.dataCallback = decoder.finishCallback = lambda data: None
                    refuse(self, *too_large(f"over {_mb(limit)}", limit))
                    return
                forward(data)

            decoder.dataCallback = counted
        # Twisted parses a multipart body itself (in memory, for `request.args`, which daphne
        # never reads) and answers a malformed one with a bare 400: leave it to Django.
        req._parsePOSTFormSubmission = False
        original(self)

    def respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own answer to a malformed request line or header has no body.
        self.transport.write(_raw_response(400, "bad_request", "The request could not be read."))
        self.loseConnection()

    channel.lineLengthExceeded = lineLengthExceeded
    channel.allHeadersReceived = allHeadersReceived
    channel._respondToBadRequestAndDisconnect = respondToBadRequestAndDisconnect
    channel._computemesh_limits = True
