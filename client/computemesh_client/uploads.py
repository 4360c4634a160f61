"""Resumable, chunked uploads (the API's /api/v1/uploads/, tus-like): the file's SHA-256 is
computed first; an unfinished upload of the same file (same purpose, name, size and
SHA-256) is resumed where the server's offset says; chunks are PATCHed at `Upload-Offset`;
after a break (a dropped connection, a timeout, a 409 at a stale offset, a 5xx) the client
asks the server for its offset and goes on from there; `finish` checks the SHA-256 on the
server and returns the dataset or code bundle."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from . import errors

if TYPE_CHECKING:
    from .client import Client

CHUNK_TYPE = "application/offset+octet-stream"
DEFAULT_CHUNK = 16 * 1024 * 1024
Progress = Callable[[int, int], None]  # (bytes the server holds, total)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def resumable_upload(client: Client, path: str | Path, *, purpose: str, name: str = "",
                     chunk_size: int = DEFAULT_CHUNK, progress: Progress | None = None,
                     breaks: int = 10, **options: Any) -> dict[str, Any]:
    """Upload `path` as a dataset or a code bundle; return what `finish` made. Gives up
    (NetworkError) after `breaks` breaks in a row without progress."""
    path = Path(path)
    size = path.stat().st_size
    sha = file_sha256(path)
    name = name or path.name
    upload = next((u for u in client.uploads() if u["purpose"] == purpose and u["name"] == name
                   and u["size_bytes"] == size and u["sha256"] == sha), None)
    if upload is None:
        body = {"purpose": purpose, "name": name, "size_bytes": size, "sha256": sha,
                **{k: v for k, v in options.items() if v not in (None, "")}}
        upload = client._json("uploads_create", json=body)
    uid, offset = upload["id"], int(upload["offset"])
    chunk_size = max(1, min(chunk_size, int(upload.get("chunk_max_bytes") or chunk_size)))
    if progress:
        progress(offset, size)
    failures = 0
    with open(path, "rb") as fh:
        while offset < size:
            fh.seek(offset)
            data = fh.read(min(chunk_size, size - offset))
            try:
                response = client._send("uploads_patch", path_args={"id": uid}, content=data,
                                        headers={"Upload-Offset": str(offset),
                                                 "Content-Type": CHUNK_TYPE}, retry=False)
                offset = int(response.headers["Upload-Offset"])
                response.close()
                failures = 0
            except (errors.NetworkError, errors.ServerError, errors.Conflict) as exc:
                if isinstance(exc, errors.Conflict) and exc.code not in ("offset_mismatch", "upload_busy"):
                    raise
                failures += 1
                if failures > breaks:
                    raise
                time.sleep(min(10.0, client.backoff_s * 2 ** (failures - 1)))
                offset = upload_offset(client, uid)  # where the server says it stopped
            if progress:
                progress(offset, size)
    return _finish(client, uid, size, breaks)


def _finish(client: Client, uid: str, size: int, breaks: int) -> dict[str, Any]:
    """`finish` reads the whole file again on the server (its SHA-256, then the encryption
    into storage): about a minute for 10 GB. Its timeout allows that; after a timeout, or
    while the first finish still runs (409 upload_busy), ask again: a finished upload answers
    with what it made."""
    timeout = max(120.0, size / 10e6)  # 10 MB/s at worst
    for attempt in range(breaks + 1):
        try:
            response = client._send("uploads_finish", path_args={"id": uid}, retry=False,
                                    timeout=timeout)
            return response.json()
        except (errors.NetworkError, errors.Conflict) as exc:
            if isinstance(exc, errors.Conflict) and exc.code != "upload_busy":
                raise
            if attempt == breaks:
                raise
            time.sleep(min(30.0, client.backoff_s * 2 ** attempt))
    raise AssertionError("unreachable")


def upload_offset(client: Client, upload_id: str) -> int:
    """The server's offset for an upload (its HEAD's Upload-Offset)."""
    response = client._send("uploads_get", path_args={"id": upload_id}, method_override="HEAD")
    try:
        return int(response.headers["Upload-Offset"])
    finally:
        response.close()


__all__ = ["resumable_upload", "upload_offset", "file_sha256", "httpx"]
