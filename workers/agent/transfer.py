"""Plain-HTTP transfers with a token scoped to one assignment (stdlib only)."""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from .sandbox import open_job_file


class TransferError(RuntimeError):
    pass


def download(url: str, token: str, dest: Path, *, timeout: float = 60) -> str:
    """Fetch `url` into `dest` atomically; returns its SHA-256."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    tmp = dest.with_suffix(dest.suffix + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as fh:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                fh.write(block)
    except urllib.error.HTTPError as exc:
        raise TransferError(f"download refused ({exc.code}): {url}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TransferError(f"download failed: {exc}") from None
    shutil.move(tmp, dest)
    return digest.hexdigest()


def _open(path: Path, root: Path | None):
    """A file the ranks wrote: inside `root` (the job's folder) and never through a link
    when given, since the job's code may have planted one (sandbox.open_job_file)."""
    return open_job_file(root, path) if root is not None else open(path, "rb")


def read_span(path: Path, offset: int, length: int, *, root: Path | None = None) -> bytes:
    """`length` bytes of a file from `offset` (a stretch the ranks appended to it)."""
    try:
        with _open(path, root) as fh:
            fh.seek(offset)
            data = fh.read(length)
    except OSError as exc:
        raise TransferError(f"cannot read {path.name}: {exc.strerror}") from None
    if len(data) != length:
        raise TransferError(f"{path.name} holds {len(data)} of the {length} bytes at {offset}")
    return data


def upload(url: str, token: str, path: Path | None, *, sha256: str, timeout: float = 120,
           data: bytes | None = None, root: Path | None = None) -> None:
    """PUT a file (or `data`) with its SHA-256 declared; `root`: the file must be in it."""
    if data is None:
        try:
            if path is None:
                data = b""
            else:
                with _open(path, root) as fh:
                    data = fh.read()
        except OSError as exc:  # a transfer error like any other, never an agent crash
            raise TransferError(f"cannot read {exc.filename or path}: {exc.strerror or exc}") from None
    request = urllib.request.Request(url, data=data, method="PUT", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream",
        "X-Content-Sha256": sha256})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()[:300].decode(errors="replace")
        raise TransferError(f"upload refused ({exc.code}): {body}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TransferError(f"upload failed: {exc}") from None
