"""The agent's side of a code bundle (workers/agent/bundle_fetch.py): unpacked into the job's
folder only after the same checks the platform made, since the agent writes with its own
rights outside the sandbox."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from workers.agent import bundle_fetch


def _zip(path, entries: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, body in entries.items():
            z.writestr(name, body)
    return path


def test_a_package_unpacks_and_is_imported_from_its_manifests_folder(tmp_path):
    archive = _zip(tmp_path / "b.zip", {"pkg/computemesh.toml": b"[task]\n", "pkg/task.py": b"X = 1\n",
                                        "pkg/lib/util.py": b""})
    bundle_fetch.unpack(archive, "zip", tmp_path / "bundle")
    assert (tmp_path / "bundle" / "pkg" / "lib" / "util.py").exists()
    assert bundle_fetch.root_of(tmp_path / "bundle") == tmp_path / "bundle" / "pkg"


def test_a_single_file_becomes_task_py(tmp_path):
    (tmp_path / "mine.py").write_text("X = 1\n")
    bundle_fetch.unpack(tmp_path / "mine.py", "py", tmp_path / "bundle")
    assert (tmp_path / "bundle" / "task.py").read_text() == "X = 1\n"


@pytest.mark.parametrize("name", ["../evil.py", "/etc/evil.py", "a/../../evil.py", "a\\..\\evil.py"])
def test_a_path_traversal_zip_is_refused(tmp_path, name):
    archive = _zip(tmp_path / "b.zip", {name: b"x", "task.py": b""})
    with pytest.raises(bundle_fetch.BundleError):
        bundle_fetch.unpack(archive, "zip", tmp_path / "job" / "bundle")
    assert not (tmp_path / "evil.py").exists() and not (tmp_path / "job" / "evil.py").exists()


def test_a_tar_with_a_link_is_refused(tmp_path):
    path = tmp_path / "b.tar"
    with tarfile.open(path, "w") as t:
        link = tarfile.TarInfo("token")
        link.type, link.linkname = tarfile.SYMTYPE, "/root/.computemesh-agent/token"
        t.addfile(link)
        body = tarfile.TarInfo("task.py")
        body.size = 0
        t.addfile(body, io.BytesIO(b""))
    with pytest.raises(bundle_fetch.BundleError, match="links"):
        bundle_fetch.unpack(path, "tar", tmp_path / "bundle")


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_fetch, "MAX_BYTES", 1 << 20)
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("task.py", b"\0" * (8 << 20))
    assert path.stat().st_size < 100_000
    with pytest.raises(bundle_fetch.BundleError, match="unpacks to more than"):
        bundle_fetch.unpack(path, "zip", tmp_path / "bundle")
    assert list((tmp_path / "bundle").iterdir()) == []
