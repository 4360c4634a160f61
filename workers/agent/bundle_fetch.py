"""A job's code bundle on the provider: fetched with the assignment's token, checked
against the SHA-256 the platform committed to, and unpacked into the job's folder, where
the sandbox's processes import it from (docs/tasks.md).

The platform checked the archive when it was uploaded (marketplace/services/archives.py);
the agent checks again before it writes a byte, because it writes with its own rights,
outside the sandbox: no absolute path, no `..`, no link or device, bounded in entries and
size. A `.py` bundle becomes `bundle/task.py`.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from . import transfer

MAX_ENTRIES = 10_000
MAX_BYTES = 1 << 30  # unpacked
FOLDER = "bundle"
# A dataset's zip (class folders of images): more files, and as large as the platform allows.
DATA_MAX_ENTRIES = 2_000_000
DATA_MAX_BYTES = 64 << 30
DATA_FOLDER = "data"


class BundleError(transfer.TransferError):
    """The bundle cannot be used; the message says why (the assignment fails with it)."""


def _member(name: str) -> PurePosixPath:
    if "\\" in name or "\x00" in name or name.startswith("/"):
        raise BundleError(f"the bundle's entry {name[:100]!r} has an unsafe path")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise BundleError(f"the bundle's entry {name[:100]!r} climbs out of it")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _budget(sizes: list[int], max_entries: int | None, max_bytes: int | None) -> None:
    max_entries = MAX_ENTRIES if max_entries is None else max_entries
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    if len(sizes) > max_entries:
        raise BundleError(f"the archive has more than {max_entries} entries")
    if sum(sizes) > max_bytes:
        raise BundleError(f"the archive unpacks to more than {max_bytes >> 20} MiB")


def unpack(archive: Path, kind: str, dest: Path, *, max_entries: int | None = None,
           max_bytes: int | None = None) -> None:
    dest.mkdir(parents=True, exist_ok=False)
    if kind == "py":
        shutil.copyfile(archive, dest / "task.py")
        return
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                infos = [i for i in z.infolist() if not i.is_dir()]
                _budget([i.file_size for i in infos], max_entries, max_bytes)
                for info in infos:
                    if (info.external_attr >> 16) & 0o170000 not in (0, 0o100000):
                        raise BundleError(f"the bundle's entry {info.filename[:100]!r} is not a file")
                    target = dest / _member(info.filename)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(target, "xb") as out:
                        # Never more than the directory declared (a lying zip is cut off).
                        out.write(src.read(info.file_size + 1)[:info.file_size])
        elif kind == "tar":
            with tarfile.open(archive) as t:
                members = t.getmembers()
                files = [m for m in members if m.isfile()]
                if any(not (m.isfile() or m.isdir()) for m in members):
                    raise BundleError("the bundle holds links or devices")
                _budget([m.size for m in files], max_entries, max_bytes)
                for m in members:
                    _member(m.name)
                t.extractall(dest, members=members, filter="data")
        else:
            raise BundleError(f"unknown bundle kind {kind!r}")
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise BundleError(f"the bundle does not unpack: {exc}") from None


def root_of(folder: Path) -> Path:
    """An archive of one top-level folder holding computemesh.toml is imported from there."""
    entries = [p for p in folder.iterdir()]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "computemesh.toml").exists():
        return entries[0]
    return folder


def fetch(start_bundle: dict, *, job_dir: Path, url: Callable[[str], str], token: str) -> dict:
    """The spec's `bundle` ({path, entry}) for the start message's ({url, sha256, kind, entry})."""
    kind = str(start_bundle.get("kind") or "py")
    download = job_dir / f"bundle.{kind}"
    sha = transfer.download(url(start_bundle["url"]), token, download)
    if start_bundle.get("sha256") and sha != start_bundle["sha256"]:
        raise BundleError("the code bundle does not match its SHA-256")
    unpack(download, kind, job_dir / FOLDER)
    download.unlink()
    return {"path": str(root_of(job_dir / FOLDER)), "entry": str(start_bundle["entry"]),
            "sha256": sha}


def fetch_data_zip(url: str, *, sha256: str | None, job_dir: Path, token: str) -> Path:
    """A dataset uploaded as a zip of files, unpacked into the job's data folder (the task
    reads it there: docs/tasks.md); the same checks as a bundle's, with a dataset's sizes."""
    archive = job_dir / "dataset.zip"
    sha = transfer.download(url, token, archive)
    if sha256 and sha != sha256:
        raise BundleError("the dataset does not match its SHA-256")
    unpack(archive, "zip", job_dir / DATA_FOLDER, max_entries=DATA_MAX_ENTRIES, max_bytes=DATA_MAX_BYTES)
    archive.unlink()
    return job_dir / DATA_FOLDER
