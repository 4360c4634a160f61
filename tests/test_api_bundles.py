"""Code bundles (issue 16): upload (one request or resumable), list, show, delete (409 while
an unfinished job uses one), another tenant refused; a bundle chosen in place of a template,
its params checked against its schema; matching only on offers that accept custom code and
whose node has the bundle's runtime, with the quote's "why no match"."""

import hashlib
import io
import tarfile
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace import runtimes
from marketplace.models import CodeBundle, Job

from .api_support import actor, assert_error, job_body
from .factories import JobFactory
from .test_api_uploads import send

URL = "/api/v1/bundles/"
pytestmark = pytest.mark.django_db
RUNTIME = runtimes.latest_runtime()
TASK = b"class Classifier:\n    def build_model(self, params):\n        return None\n"
MANIFEST = f"""
[task]
entry = "pkg.task:Classifier"
runtime = "{RUNTIME}"

[params]
type = "object"
additionalProperties = false
[params.properties.lr]
type = "number"
minimum = 0
default = 0.01
[params.properties.epochs]
type = "integer"
minimum = 1
default = 3
""".encode()


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def zip_bundle(manifest: bytes | None = MANIFEST, extra: dict | None = None) -> bytes:
    files = {"pkg/__init__.py": b"", "pkg/task.py": TASK,
             **({"computemesh.toml": manifest} if manifest is not None else {}), **(extra or {})}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():  # fixed times: the same files, the same bytes
            z.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def post_file(client, content: bytes, name: str, **fields):
    return client.post(URL, {"file": SimpleUploadedFile(name, content), **fields},
                       format="multipart")


@pytest.fixture
def bundle(api, alice) -> CodeBundle:
    response = post_file(api.as_user(alice), zip_bundle(), "classifier.zip")
    assert response.status_code == 201, response.content
    return CodeBundle.objects.get(pk=response.json()["id"])


def test_a_zip_with_a_manifest_declares_its_runtime_entry_and_schema(api, alice, bundle, media):
    body = api.as_user(alice).get(f"{URL}{bundle.pk}/").json()
    assert body["runtime"] == RUNTIME and body["runtime_known"] is True
    assert body["entry"] == "pkg.task:Classifier" and body["kind"] == "zip"
    assert body["params_schema"]["properties"]["lr"]["default"] == 0.01
    assert body["sha256"] == hashlib.sha256(zip_bundle()).hexdigest()
    # Content-addressed and encrypted at rest.
    (stored,) = [p for p in media.rglob("*") if p.is_file()]
    assert stored.name == f"{body['sha256']}.enc" and TASK not in stored.read_bytes()
    # The same content again is the same bundle.
    again = post_file(api.as_user(alice), zip_bundle(), "copy.zip")
    assert again.status_code == 200 and again.json()["id"] == bundle.pk
    assert [b["id"] for b in api.as_user(alice).get(URL).json()] == [bundle.pk]


def test_a_single_py_file_with_fields(api, alice):
    response = post_file(api.as_user(alice), TASK, "classifier.py", entry="Classifier",
                         runtime=RUNTIME, params_schema='{"properties": {"lr": {"type": "number"}}}')
    assert response.status_code == 201, response.content
    assert response.json()["entry"] == "task:Classifier" and response.json()["kind"] == "py"


def test_a_resumable_upload_makes_a_bundle(api, alice):
    content = zip_bundle()
    _, finished = send(api.as_user(alice), content, name="classifier.zip", purpose="bundle",
                       chunk=200)
    assert finished.status_code == 201, finished.content
    assert finished.json()["sha256"] == hashlib.sha256(content).hexdigest()


def test_a_tar_gz_bundle(api, alice):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as t:
        for name, data in {"mypkg/computemesh.toml": MANIFEST, "mypkg/pkg/task.py": TASK}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    response = post_file(api.as_user(alice), out.getvalue(), "mypkg.tar.gz")
    assert response.status_code == 201, response.content
    assert response.json()["kind"] == "tar"


@pytest.mark.parametrize(("content", "name", "fields", "field", "words"), [
    (b"def broken(:\n", "task.py", {"entry": "T"}, "file", "does not parse"),
    (TASK, "task.txt", {}, "file", ".py file or a .zip"),
    (TASK, "task.py", {}, "entry", "module:Class"),
    (TASK, "task.py", {"entry": "T", "runtime": "Bad Name!"}, "runtime", "runtime"),
    (TASK, "task.py", {"entry": "T", "params_schema": "{not json"}, "params_schema", "JSON"),
    (TASK, "task.py", {"entry": "T", "params_schema": '{"type": "array"}'}, "params_schema", "object"),
    (TASK, "task.py", {"entry": "T", "params_schema":
                       '{"properties": {"x": {"type": "string", "pattern": "(a+)+$"}}}'},
     "params_schema", "pattern"),
    (zip_bundle(b"[task\nentry="), "b.zip", {}, "file", "TOML"),
    (zip_bundle(b'[task]\nentry = "pkg.task:Classifier"\n'), "b.zip", {}, "runtime", "runtime"),
    (zip_bundle(extra={"../../etc/cron.d/x": b"x"}), "b.zip", {}, "file", "climbs out"),
])
def test_bad_bundles_are_400(api, alice, content, name, fields, field, words):
    body = assert_error(post_file(api.as_user(alice), content, name, **fields), 400, field)
    assert words in body["detail"], body
    assert not CodeBundle.objects.exists()


def test_size_limit(api, alice, settings):
    settings.BUNDLE_MAX_BYTES = 100
    assert_error(post_file(api.as_user(alice), TASK * 10, "task.py", entry="T"), 413)


@pytest.mark.parametrize(("who", "expected"), [
    ("anonymous", 401), ("bob", 404), ("carol", 403), ("dave", 403), ("admin_user", 403)])
def test_another_tenant_is_refused(request, api, bundle, who, expected):
    other = api.as_user(actor(request, who))
    assert_error(other.get(f"{URL}{bundle.pk}/"), expected)
    assert_error(other.delete(f"{URL}{bundle.pk}/"), expected)
    listed = other.get(URL)
    assert listed.status_code == (200 if expected == 404 else expected)
    if expected == 404:
        assert listed.json() == []
        # Nor can bob's job use alice's bundle.
        body = assert_error(other.post("/api/v1/jobs/", job_body(template="", bundle=bundle.pk,
                                                                  dataset=""), format="json"), 400)
        assert body["field"] == "bundle"
    assert CodeBundle.objects.filter(pk=bundle.pk).exists()


def test_delete_and_409_while_an_unfinished_job_uses_it(api, alice, healthcare, bundle, media,
                                                       django_capture_on_commit_callbacks):
    job = JobFactory(owner=healthcare, template="", bundle=bundle, status=Job.Status.RUNNING)
    body = assert_error(api.as_user(alice).delete(f"{URL}{bundle.pk}/"), 409)
    assert body["code"] == "bundle_in_use" and f"#{job.pk}" in body["detail"]
    Job.objects.filter(pk=job.pk).update(status=Job.Status.COMPLETED)
    with django_capture_on_commit_callbacks(execute=True):
        assert api.as_user(alice).delete(f"{URL}{bundle.pk}/").status_code == 204
    assert not CodeBundle.objects.exists() and [p for p in media.rglob("*") if p.is_file()] == []
    job.refresh_from_db()
    assert job.bundle_id is None


# --- jobs with a bundle ---------------------------------------------------------------------

def test_a_job_with_a_bundle_in_place_of_a_template(api, alice, bundle):
    response = api.as_user(alice).post("/api/v1/jobs/", job_body(
        template="", bundle=bundle.pk, dataset="", params={"lr": 0.5}), format="json")
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert job.bundle_id == bundle.pk and job.template == "" and job.dataset_ref == ""
    assert job.params == {"lr": 0.5, "epochs": 3}  # the schema's defaults filled in
    assert response.json()["bundle"] == bundle.pk


@pytest.mark.parametrize(("overrides", "field"), [
    ({"params": {"lr": -1}}, "params.lr"),
    ({"params": {"momentum": 0.9}}, "params"),
    ({"template": "tabular-classifier"}, "bundle"),
    ({"dataset": "sample:breast-cancer"}, "dataset"),
])
def test_a_bundles_params_are_checked_at_submission(api, alice, bundle, overrides, field):
    body = job_body(template="", bundle=bundle.pk, dataset="")
    body.update(overrides)
    assert_error(api.as_user(alice).post("/api/v1/jobs/", body, format="json"), 400, field)


def test_a_template_job_needs_a_template_or_a_bundle(api, alice):
    assert_error(api.as_user(alice).post("/api/v1/jobs/", job_body(template=""), format="json"),
                 400, "template")
