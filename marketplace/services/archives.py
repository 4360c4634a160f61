"""Checks on archives that consumers upload (zip datasets, zip/tar code bundles), made from
the archive's directory alone before anything is extracted: every refusal is a clear 400.

Refused: an entry whose path is absolute, climbs out (`..`), or holds a drive letter or a
backslash; a link (symbolic or hard) or a device; more than ARCHIVE_MAX_ENTRIES entries;
more than ARCHIVE_MAX_UNCOMPRESSED_BYTES once extracted, or any entry that expands more
than ARCHIVE_MAX_RATIO times (a zip bomb); an encrypted zip entry.
"""

import os
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from django.conf import settings

from ..errors import MarketError

# A tiny file may compress well past any ratio (a 1 MB file of zeros): below this size an
# entry's ratio is not held against it; the total still is.
RATIO_FREE_BYTES = 1_048_576


@dataclass(frozen=True)
class ArchiveSummary:
    kind: str  # "zip" | "tar"
    entries: int  # files
    uncompressed_bytes: int
    names: tuple[str, ...]  # the files' normalised paths (first 1,000 kept for display)


def _fail(message: str, field: str) -> MarketError:
    return MarketError(message, field=field, code="invalid_archive")


def safe_member_name(name: str, *, field: str) -> str:
    """The normalised relative path of an archive entry, or MarketError."""
    if "\\" in name or "\x00" in name:
        raise _fail(f"The archive entry '{name[:120]}' has a backslash or NUL in its path.", field)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _fail(f"The archive entry '{name[:120]}' has an absolute path; entries must be "
                    "relative to the archive's root.", field)
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise _fail(f"The archive entry '{name[:120]}' climbs out of the archive ('..'); "
                    "refused.", field)
    return "/".join(parts)


def _limits(entries: int, total: int, *, field: str) -> None:
    if entries > settings.ARCHIVE_MAX_ENTRIES:
        raise _fail(f"The archive has more than {settings.ARCHIVE_MAX_ENTRIES:,} entries; "
                    "pack fewer, larger files.", field)
    if total > settings.ARCHIVE_MAX_UNCOMPRESSED_BYTES:
        raise _fail(f"The archive expands to more than "
                    f"{settings.ARCHIVE_MAX_UNCOMPRESSED_BYTES / 1024**3:.1f} GiB; refused (a "
                    "compressed archive may not expand past that limit).", field)


def zip_inspect(path: str, *, field: str = "file") -> ArchiveSummary:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise _fail("This is not a readable zip archive.", field) from None
    with archive:
        infos = archive.infolist()
        _limits(len(infos), 0, field=field)
        total, names = 0, []
        for info in infos:
            name = safe_member_name(info.filename, field=field)
            # Unix type bits, when the archiver wrote them (0: none, a plain entry).
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _fail(f"The archive entry '{info.filename[:120]}' is a link or a special "
                            "file; only files and folders are accepted.", field)
            if info.flag_bits & 0x1:
                raise _fail(f"The archive entry '{info.filename[:120]}' is encrypted; upload it "
                            "without a password (it is encrypted at rest here).", field)
            if info.is_dir():
                continue
            total += info.file_size
            _limits(len(infos), total, field=field)
            if (info.file_size > RATIO_FREE_BYTES
                    and info.file_size > settings.ARCHIVE_MAX_RATIO * max(info.compress_size, 1)):
                raise _fail(f"The archive entry '{info.filename[:120]}' expands "
                            f"{info.file_size // max(info.compress_size, 1):,} times (more than "
                            f"{settings.ARCHIVE_MAX_RATIO}); refused as a possible zip bomb.", field)
            names.append(name)
    if not names:
        raise _fail("The archive holds no files.", field)
    return ArchiveSummary("zip", len(names), total, tuple(names[:1000]))


def tar_inspect(path: str, *, field: str = "file") -> ArchiveSummary:
    compressed = os.path.getsize(path)
    try:
        archive = tarfile.open(path)
    except (tarfile.TarError, OSError, ValueError, EOFError):
        raise _fail("This is not a readable tar archive (.tar, .tar.gz).", field) from None
    total, names, count = 0, [], 0
    with archive:
        try:
            for member in archive:
                count += 1
                _limits(count, total, field=field)
                name = safe_member_name(member.name, field=field)
                if member.issym() or member.islnk() or not (member.isfile() or member.isdir()):
                    raise _fail(f"The archive entry '{member.name[:120]}' is a link or a special "
                                "file; only files and folders are accepted.", field)
                if member.isdir():
                    continue
                total += member.size
                _limits(count, total, field=field)
                names.append(name)
        except (tarfile.TarError, EOFError, OSError):
            raise _fail("The tar archive is damaged or cut short.", field) from None
    if total > RATIO_FREE_BYTES and total > settings.ARCHIVE_MAX_RATIO * max(compressed, 1):
        raise _fail(f"The archive expands {total // max(compressed, 1):,} times (more than "
                    f"{settings.ARCHIVE_MAX_RATIO}); refused as a possible bomb.", field)
    if not names:
        raise _fail("The archive holds no files.", field)
    return ArchiveSummary("tar", len(names), total, tuple(names[:1000]))
