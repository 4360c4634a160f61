"""/api/v1/datasets/: CSV uploads, checked before they are stored."""

import hashlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace.models import Dataset, Job
from marketplace.services.datasets import dataset_read

from .api_support import actor, assert_error, job_body

URL = "/api/v1/datasets/"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def csv_bytes(rows: int = 12, columns: int = 3) -> bytes:
    header = ",".join(["label", *(f"f{i}" for i in range(1, columns))])
    lines = [header] + [",".join(str((r * columns + c) % 7) for c in range(columns))
                        for r in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def upload(client, content: bytes, filename: str = "vitals.csv", **extra):
    return client.post(URL, {"file": SimpleUploadedFile(filename, content, "text/csv"), **extra},
                       format="multipart")


def stored_files(media) -> list:
    return [p for p in media.rglob("*") if p.is_file()]


@pytest.mark.parametrize(("who", "expected"), [
    ("anonymous", 401), ("alice", 201), ("bob", 201), ("carol", 403), ("dave", 403),
    ("admin_user", 403),
])
def test_upload_matrix(request, api, media, who, expected):
    response = upload(api.as_user(actor(request, who)), csv_bytes())
    assert response.status_code == expected, response.content
    assert Dataset.objects.count() == (1 if expected == 201 else 0)
    assert len(stored_files(media)) == (1 if expected == 201 else 0)


def test_upload_describes_and_stores_the_file(api, alice, healthcare, media):
    content = csv_bytes(rows=25, columns=4)
    response = upload(api.as_user(alice), content, filename="../../etc/vitals.csv")
    assert response.status_code == 201
    data = response.json()
    assert (data["rows"], data["columns"], data["size_bytes"]) == (
        25, ["label", "f1", "f2", "f3"], len(content))
    assert data["name"] == "vitals.csv"
    dataset = Dataset.objects.get(pk=data["id"])
    assert dataset.owner == healthcare and dataset.created_by == alice
    assert dataset.sha256 == hashlib.sha256(content).hexdigest() == data["sha256"]
    with dataset.file.open("rb") as f:  # encrypted at rest (tests/test_data_at_rest.py)
        assert content not in f.read()
    assert dataset_read(dataset) == content
    # Stored under a generated name inside MEDIA_ROOT, whatever the client called it.
    assert [p.resolve() for p in stored_files(media)] == [
        (media / dataset.file.name).resolve()]
    assert "etc" not in dataset.file.name


def test_upload_with_a_name_bom_and_crlf(api, alice):
    content = b"\xef\xbb\xbf" + csv_bytes().replace(b"\n", b"\r\n")
    response = upload(api.as_user(alice), content, filename="x.csv", name=" ICU vitals ")
    assert response.status_code == 201
    assert response.json()["name"] == "ICU vitals"
    assert response.json()["columns"][0] == "label"


def test_list_shows_only_own_organizations_datasets(api, alice, bob):
    upload(api.as_user(alice), csv_bytes(), filename="alice.csv")
    upload(api.as_user(bob), csv_bytes(), filename="bob.csv")
    names = [d["name"] for d in api.as_user(alice).get(URL).json()["results"]]
    assert names == ["alice.csv"]
    assert_error(api.as_user(None).get(URL), 401)
    assert api.as_user(bob).get(URL).json()["count"] == 1


def test_uploaded_dataset_can_train_a_job_of_its_owner_only(api, alice, bob):
    dataset_id = upload(api.as_user(alice), csv_bytes()).json()["id"]
    response = api.as_user(alice).post("/api/v1/jobs/", job_body(dataset=str(dataset_id)),
                                       format="json")
    assert response.status_code == 201, response.content
    assert Job.objects.get().dataset_id == dataset_id
    assert_error(api.as_user(bob).post("/api/v1/jobs/", job_body(dataset=str(dataset_id)),
                                       format="json"), 400, "dataset")
    assert Job.objects.count() == 1


def _wide(columns: int) -> bytes:
    header = ",".join(f"c{i}" for i in range(columns))
    row = ",".join("1" for _ in range(columns))
    return ("\n".join([header] + [row] * 12) + "\n").encode()


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "empty"),
    (b"   \n\n", "empty"),
    ("label,température\n".encode("latin-1") + b"1,2\n" * 12, "UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64, "binary"),
    (b"label,a,b\n" + b"1,2,3\n" * 5 + b"1,2\n" + b"1,2,3\n" * 6, "Line 7 has 2 columns"),
    (b"1,2,3\n" * 20, "header"),
    (b"label,,b\n" + b"1,2,3\n" * 12, "header"),
    (b"label,a,a\n" + b"1,2,3\n" * 12, "unique"),
    (b"label,a,b\n" + b"1,2,3\n" * 9, "9 data rows"),
    (_wide(501), "501 columns"),
    (b"just one column of text\n" * 20, "one column"),
    (b'label,a\n"unterminated,1\n' + b"1,2\n" * 12, "not valid CSV"),
])
def test_bad_files_are_400_with_the_reason(api, alice, media, content, reason):
    data = assert_error(upload(api.as_user(alice), content), 400, "file")
    assert reason in data["detail"], data
    assert not Dataset.objects.exists()
    assert stored_files(media) == []


def test_exactly_500_columns_and_10_rows_are_accepted(api, alice):
    assert upload(api.as_user(alice), _wide(500)).status_code == 201
    assert upload(api.as_user(alice), csv_bytes(rows=10)).status_code == 201


def test_too_large_file_is_refused(api, alice, settings, media):
    settings.DATASET_MAX_BYTES = 1000
    data = assert_error(upload(api.as_user(alice), csv_bytes(rows=200)), 400, "file")
    assert "limit" in data["detail"]
    assert not Dataset.objects.exists() and stored_files(media) == []


def test_body_far_over_the_limit_is_refused_before_reading(api, alice, settings):
    settings.DATASET_MAX_BYTES = 1000
    response = upload(api.as_user(alice), csv_bytes(rows=20_000))
    data = assert_error(response, 413)
    assert "limit" in data["detail"]
    assert not Dataset.objects.exists()


@pytest.mark.parametrize(("body", "field"), [
    ({}, "file"),
    ({"file": "not a file"}, "file"),
    ({"name": "n" * 10_000, "file": SimpleUploadedFile("a.csv", b"a,b\n" + b"1,2\n" * 12)},
     "name"),
])
def test_missing_or_bad_fields(api, alice, body, field):
    assert_error(api.as_user(alice).post(URL, body, format="multipart"), 400, field)
    assert not Dataset.objects.exists()


def test_json_body_is_415(api, alice):
    assert_error(api.as_user(alice).post(URL, {"file": "a,b"}, format="json"), 415)
    assert not Dataset.objects.exists()


@pytest.mark.parametrize(("label", "content", "status"), [
    ("label", csv_bytes(), 201),
    ("outcome", csv_bytes(), 400),
    ("label", b"label,f1\n" + b"".join(b"1,%d\n" % i for i in range(12)), 400),  # one class
    ("label", b"label,f1\n" + b"".join(b"%d,x\n" % (i % 2) for i in range(12)), 400),  # not numeric
])
def test_a_label_column_is_checked_at_upload(api, alice, label, content, status):
    response = upload(api.as_user(alice), content, label_column=label)
    assert response.status_code == status, response.content
    if status == 400:
        assert response.json()["field"] in ("label_column", "file")
    assert Dataset.objects.count() == (1 if status == 201 else 0)
