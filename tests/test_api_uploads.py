"""Resumable, chunked uploads (issue 16): create with size and SHA-256, PATCH chunks at
Upload-Offset, HEAD for the offset, finish checks the SHA-256; quota, size limit, another
tenant refused, archives checked (zip bombs, path traversal, links, too many entries)."""

import hashlib
import io
import stat
import tarfile
import zipfile

import pytest

from marketplace.errors import MarketError
from marketplace.models import Dataset, Upload
from marketplace.services.datasets import dataset_read
from marketplace.services.uploads import partial_path, upload_write

from .api_support import actor, assert_error
from .test_api_datasets import csv_bytes

URL = "/api/v1/uploads/"
CHUNK = "application/offset+octet-stream"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def create(client, content: bytes, name: str = "vitals.csv", purpose: str = "dataset", **extra):
    return client.post(URL, {"purpose": purpose, "name": name, "size_bytes": len(content),
                             "sha256": hashlib.sha256(content).hexdigest(), **extra}, format="json")


def patch(client, upload_id, offset: int, body: bytes):
    return client.generic("PATCH", f"{URL}{upload_id}/", body, content_type=CHUNK,
                          HTTP_UPLOAD_OFFSET=str(offset))


def offset_of(client, upload_id) -> int:
    response = client.head(f"{URL}{upload_id}/")
    assert response.status_code == 200, response.content
    return int(response["Upload-Offset"])


def send(client, content: bytes, name: str = "vitals.csv", purpose: str = "dataset", chunk=7,
         **extra):
    created = create(client, content, name, purpose, **extra)
    assert created.status_code == 201, created.content
    uid = created.json()["id"]
    for at in range(0, len(content), chunk):
        response = patch(client, uid, at, content[at:at + chunk])
        assert response.status_code == 204, response.content
        assert int(response["Upload-Offset"]) == min(at + chunk, len(content))
    return uid, client.post(f"{URL}{uid}/finish/")


def test_chunks_then_finish_make_an_encrypted_dataset(api, alice, media):
    content = csv_bytes(rows=40)
    uid, finished = send(api.as_user(alice), content)
    assert finished.status_code == 201, finished.content
    body = finished.json()
    assert body["kind"] == "csv" and body["rows"] == 40
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    dataset = Dataset.objects.get(pk=body["id"])
    assert dataset_read(dataset) == content
    stored = [p for p in media.rglob("*") if p.is_file()]
    assert len(stored) == 1 and content[:20] not in stored[0].read_bytes()  # encrypted at rest
    again = api.as_user(alice).post(f"{URL}{uid}/finish/")
    assert again.status_code == 200 and again.json()["id"] == body["id"]


def test_a_break_resumes_at_the_servers_offset(api, alice):
    client = api.as_user(alice)
    content = csv_bytes(rows=30)
    uid = create(client, content).json()["id"]
    assert patch(client, uid, 0, content[:50]).status_code == 204
    # A chunk cut short (the client went away after 10 of 40 bytes; the real server's
    # version of this is in tests/test_upload_resume_live.py).
    pieces = iter([content[50:60], b""])
    with pytest.raises(MarketError) as cut:
        upload_write(upload=Upload.objects.get(pk=uid), offset=50, length=40,
                     read=lambda n: next(pieces))
    assert cut.value.code == "incomplete_chunk"
    assert offset_of(client, uid) == 50  # nothing of the cut chunk was kept
    assert partial_path(Upload.objects.get(pk=uid)).stat().st_size == 50
    # A retry at a stale offset is refused with the offset to resume from.
    stale = assert_error(patch(client, uid, 0, content[:50]), 409)
    assert stale["code"] == "offset_mismatch" and "(50)" in stale["detail"]
    assert patch(client, uid, 50, content[50:]).status_code == 204
    finished = client.post(f"{URL}{uid}/finish/")
    assert finished.status_code == 201, finished.content
    assert dataset_read(Dataset.objects.get(pk=finished.json()["id"])) == content


def test_a_patch_while_another_writes_is_409(api, alice):
    from django.core.cache import cache

    client = api.as_user(alice)
    content = csv_bytes()
    uid = create(client, content).json()["id"]
    cache.add(f"computemesh:upload-writing:{uid}", "someone", timeout=60)  # a PATCH in progress
    busy = assert_error(patch(client, uid, 0, content), 409)
    assert busy["code"] == "upload_busy"
    cache.delete(f"computemesh:upload-writing:{uid}")
    assert patch(client, uid, 0, content).status_code == 204


def test_sha256_mismatch_is_refused_and_discarded(api, alice, media):
    client = api.as_user(alice)
    content = csv_bytes()
    wrong = hashlib.sha256(b"another file").hexdigest()
    uid = create(client, content, sha256=wrong).json()["id"]
    assert patch(client, uid, 0, content).status_code == 204
    body = assert_error(client.post(f"{URL}{uid}/finish/"), 400, "sha256")
    assert body["code"] == "sha256_mismatch"
    assert not Upload.objects.filter(pk=uid).exists() and not Dataset.objects.exists()
    assert [p for p in media.rglob("*") if p.is_file()] == []


def test_finish_before_all_bytes_is_409(api, alice):
    client = api.as_user(alice)
    content = csv_bytes()
    uid = create(client, content).json()["id"]
    assert patch(client, uid, 0, content[:10]).status_code == 204
    assert assert_error(client.post(f"{URL}{uid}/finish/"), 409)["code"] == "upload_incomplete"


def test_a_chunk_past_the_declared_size_is_refused(api, alice):
    client = api.as_user(alice)
    content = csv_bytes()
    uid = create(client, content).json()["id"]
    assert_error(patch(client, uid, 0, content + b"more"), 400)
    assert offset_of(client, uid) == 0


def test_quota_and_size_limit(api, alice, settings):
    client = api.as_user(alice)
    settings.ORG_STORAGE_QUOTA_BYTES = 1000
    content = csv_bytes()
    first = create(client, content)
    assert first.status_code == 201  # reserved while open
    body = assert_error(create(client, b"x" * (1001 - len(content)), name="more.csv"), 413,
                        "size_bytes")
    assert body["code"] == "quota_exceeded" and "quota" in body["detail"]
    settings.ORG_STORAGE_QUOTA_BYTES = 10**13
    settings.UPLOAD_MAX_BYTES = 100
    assert assert_error(create(client, b"y" * 101, name="big.csv"), 413)["code"] == "too_large"


def test_the_default_size_limit_is_at_least_10_gb(settings):
    assert settings.UPLOAD_MAX_BYTES >= 10 * 10**9


def test_bad_declarations_are_400(api, alice):
    client = api.as_user(alice)
    assert_error(create(client, b"abc", name="notes.txt"), 400, "name")
    assert_error(client.post(URL, {"purpose": "dataset", "name": "a.csv", "size_bytes": 3,
                                   "sha256": "xyz"}, format="json"), 400, "sha256")
    assert_error(client.post(URL, {"purpose": "weights", "name": "a.csv", "size_bytes": 3,
                                   "sha256": "0" * 64}, format="json"), 400, "purpose")
    uid = create(client, b"abc").json()["id"]
    no_offset = client.generic("PATCH", f"{URL}{uid}/", b"abc", content_type=CHUNK)
    assert_error(no_offset, 400, "Upload-Offset")
    wrong_type = client.generic("PATCH", f"{URL}{uid}/", b"abc", content_type="text/plain",
                                HTTP_UPLOAD_OFFSET="0")
    assert wrong_type.status_code in (400, 415)


@pytest.mark.parametrize(("who", "expected"), [
    ("anonymous", 401), ("bob", 404), ("carol", 403), ("dave", 403), ("admin_user", 403)])
def test_another_tenant_is_refused_on_every_upload_endpoint(request, api, alice, who, expected):
    content = csv_bytes()
    uid = create(api.as_user(alice), content).json()["id"]
    other = api.as_user(actor(request, who))
    assert_error(other.get(f"{URL}{uid}/"), expected)
    assert other.head(f"{URL}{uid}/").status_code == expected
    assert_error(patch(other, uid, 0, content), expected)
    assert_error(other.post(f"{URL}{uid}/finish/"), expected)
    assert_error(other.delete(f"{URL}{uid}/"), expected)
    if expected == 404:
        assert other.get(URL).json() == []
    assert Upload.objects.get(pk=uid).offset == 0


def test_abandoning_an_upload_frees_it(api, alice, media):
    client = api.as_user(alice)
    content = csv_bytes()
    uid = create(client, content).json()["id"]
    assert patch(client, uid, 0, content[:10]).status_code == 204
    assert client.delete(f"{URL}{uid}/").status_code == 204
    assert not Upload.objects.exists() and [p for p in media.rglob("*") if p.is_file()] == []


# --- zip datasets -------------------------------------------------------------------------

def zip_of(files: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def test_a_zip_of_class_folders_is_a_dataset(api, alice):
    content = zip_of({f"{label}/{i}.png": bytes([i]) * 64 for label in ("cat", "dog")
                      for i in range(5)})
    _, finished = send(api.as_user(alice), content, name="pets.zip", chunk=100)
    assert finished.status_code == 201, finished.content
    assert finished.json()["kind"] == "zip" and finished.json()["entries"] == 10


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "a/../../b.txt", "c:\\evil.txt"])
def test_path_traversal_archives_are_refused(api, alice, name):
    content = zip_of({"ok/1.png": b"1", name: b"x"})
    _, finished = send(api.as_user(alice), content, name="evil.zip", chunk=1000)
    body = assert_error(finished, 400, "file")
    assert body["code"] == "invalid_archive" and "discarded" in body["detail"]
    assert not Dataset.objects.exists() and not Upload.objects.exists()  # nor its quota


def test_a_symlink_in_an_archive_is_refused(api, alice):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        link = zipfile.ZipInfo("data/link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    _, finished = send(api.as_user(alice), out.getvalue(), name="links.zip", chunk=1000)
    assert "link" in assert_error(finished, 400, "file")["detail"]


def test_a_zip_bomb_is_refused(api, alice):
    content = zip_of({"zeros.bin": b"\0" * (20 * 1_048_576)})
    assert len(content) < 100_000
    _, finished = send(api.as_user(alice), content, name="bomb.zip", chunk=50_000)
    assert "zip bomb" in assert_error(finished, 400, "file")["detail"]


def test_archive_total_and_entry_limits(api, alice, settings):
    settings.ARCHIVE_MAX_ENTRIES = 5
    content = zip_of({f"{i}.txt": b"x" for i in range(6)})
    _, finished = send(api.as_user(alice), content, name="many.zip", chunk=1000)
    assert "entries" in assert_error(finished, 400, "file")["detail"]
    settings.ARCHIVE_MAX_ENTRIES = 100
    settings.ARCHIVE_MAX_UNCOMPRESSED_BYTES = 1000
    content = zip_of({"a.bin": bytes(range(256)) * 8}, compression=zipfile.ZIP_STORED)
    _, finished = send(api.as_user(alice), content, name="big.zip", chunk=1000)
    assert "expands" in assert_error(finished, 400, "file")["detail"]


def test_a_tar_with_a_hard_link_is_refused(api, alice):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        info = tarfile.TarInfo("pkg/task.py")
        data = b"class T: pass\n"
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("pkg/secret")
        link.type = tarfile.LNKTYPE
        link.linkname = "/etc/shadow"
        t.addfile(link)
    _, finished = send(api.as_user(alice), out.getvalue(), name="pkg.tar", purpose="bundle",
                       chunk=4096, entry="task:T")
    assert "link" in assert_error(finished, 400, "file")["detail"]


def test_an_upload_left_too_long_is_discarded_and_frees_the_quota(api, alice, settings, media):
    from datetime import timedelta

    from django.utils import timezone

    client = api.as_user(alice)
    settings.ORG_STORAGE_QUOTA_BYTES = 1000
    content = csv_bytes()
    stale = create(client, b"s" * 950, name="old.csv").json()["id"]
    assert patch(client, stale, 0, b"s" * 100).status_code == 204
    assert_error(create(client, content), 413)  # the open upload holds the quota
    Upload.objects.filter(pk=stale).update(
        updated_at=timezone.now() - timedelta(seconds=settings.UPLOAD_EXPIRE_S + 1))
    assert create(client, content).status_code == 201
    assert not Upload.objects.filter(pk=stale).exists()
    assert not (media / "uploads" / f"{stale}.part").exists()
