"""Data on the platform (issue 13, item 7, platform side): uploaded datasets are encrypted at
rest (AES-256-GCM under DATASET_ENCRYPTION_KEY) and decrypted only when served to an agent
with its assignment's token (or to the verify worker); a job's checkpoints are capped on the
platform by count and bytes."""

import base64
import hashlib
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace.models import Assignment, Checkpoint, Dataset, Job
from marketplace.services.datasets import MAGIC, dataset_plain_path
from marketplace.services.execution import assignment_token

from .factories import NodeFactory, OfferFactory
from .test_agent_http import put, zipped

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent
CSV = ("label,f1,f2\n" + "".join(f"{i % 2},{i},{i * 3}\n" for i in range(20))).encode()


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.DATASET_ENCRYPTION_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()
    return tmp_path


def _upload(api, alice) -> Dataset:
    response = api.as_user(alice).post("/api/v1/datasets/", {
        "file": SimpleUploadedFile("patients.csv", CSV, "text/csv")}, format="multipart")
    assert response.status_code == 201, response.content
    return Dataset.objects.get(pk=response.json()["id"])


def _running_on(dataset: Dataset) -> Assignment:
    from .factories import JobFactory

    job = JobFactory(owner=dataset.owner, status=Job.Status.RUNNING, dataset=dataset,
                     dataset_ref=str(dataset.pk))
    node = NodeFactory()
    return Assignment.objects.create(job=job, node=node, offer=OfferFactory(node=node), attempt=1,
                                     node_rank=0, gpus=1, price_per_gpu_hour=Decimal("1"),
                                     status=Assignment.Status.RUNNING)


def test_an_upload_is_stored_encrypted_and_served_decrypted_to_its_agent(api, client, alice, media):
    dataset = _upload(api, alice)
    stored = [p for p in media.rglob("*") if p.is_file()]
    assert len(stored) == 1
    raw = stored[0].read_bytes()
    assert raw.startswith(MAGIC) and b"label" not in raw and CSV not in raw
    assert dataset.sha256 == hashlib.sha256(CSV).hexdigest() and dataset.size_bytes == len(CSV)

    assignment = _running_on(dataset)
    url = f"/api/v1/agent/assignments/{assignment.pk}/dataset/"
    served = client.get(url, HTTP_AUTHORIZATION=f"Bearer {assignment_token(assignment)}")
    assert served.status_code == 200 and b"".join(served.streaming_content) == CSV
    assert client.get(url, HTTP_AUTHORIZATION="Bearer forged").status_code == 404
    # The verify worker gets a private temporary file, gone after use.
    with dataset_plain_path(dataset) as path:
        assert Path(path).read_bytes() == CSV and oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert not Path(path).exists()


def test_a_tampered_file_or_another_key_is_refused_with_the_reason(api, client, alice, media, settings):
    dataset = _upload(api, alice)
    assignment = _running_on(dataset)
    url = f"/api/v1/agent/assignments/{assignment.pk}/dataset/"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {assignment_token(assignment)}"}

    settings.DATASET_ENCRYPTION_KEY = base64.urlsafe_b64encode(b"z" * 32).decode()
    response = client.get(url, **auth)
    assert response.status_code == 400 and "another DATASET_ENCRYPTION_KEY" in response.json()["detail"]

    settings.DATASET_ENCRYPTION_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()
    path = Path(dataset.file.path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    response = client.get(url, **auth)
    assert response.status_code == 400 and "damaged" in response.json()["detail"]


def _settings_value(name: str, **env) -> subprocess.CompletedProcess:
    code = f"from django.conf import settings; print(settings.{name})"
    base = {k: v for k, v in os.environ.items() if not k.startswith("DATASET_ENCRYPTION_KEY")}
    return subprocess.run([sys.executable, "-c", f"import django; django.setup(); {code}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**base, "DJANGO_SETTINGS_MODULE": "webapp.settings_test", **env})


def test_the_key_comes_from_a_file_and_a_bad_one_stops_the_process(tmp_path):
    key = base64.urlsafe_b64encode(b"f" * 32).decode()
    (tmp_path / "key").write_text(key + "\n")
    ok = _settings_value("DATASET_ENCRYPTION_KEY", DATASET_ENCRYPTION_KEY_FILE=str(tmp_path / "key"))
    assert ok.returncode == 0 and ok.stdout.strip() == key, ok.stderr
    bad = _settings_value("DATASET_ENCRYPTION_KEY", DATASET_ENCRYPTION_KEY="short")
    assert bad.returncode != 0 and "32 bytes" in bad.stderr
    both = _settings_value("DATASET_ENCRYPTION_KEY", DATASET_ENCRYPTION_KEY=key,
                           DATASET_ENCRYPTION_KEY_FILE=str(tmp_path / "key"))
    assert both.returncode != 0 and "not both" in both.stderr


def test_checkpoints_are_capped_per_job_by_count(client, settings, api, alice):
    settings.CHECKPOINTS_MAX_PER_JOB = 2
    assignment = _running_on(_upload(api, alice))
    token = assignment_token(assignment)
    base = f"/api/v1/agent/assignments/{assignment.pk}/checkpoints"
    assert put(client, f"{base}/10/", zipped(b"a"), token).status_code == 201
    assert put(client, f"{base}/20/", zipped(b"b"), token).status_code == 201
    refused = put(client, f"{base}/30/", zipped(b"c"), token)
    assert refused.status_code == 409, refused.content
    body = refused.json()
    assert body["code"] == "checkpoint_quota" and "CHECKPOINTS_MAX_PER_JOB" in body["detail"]
    assert Checkpoint.objects.filter(job=assignment.job).count() == 2


def test_checkpoints_are_capped_per_job_by_bytes(client, settings, api, alice):
    first = zipped(b"x" * 1000)
    settings.CHECKPOINT_BYTES_MAX_PER_JOB = len(first) + 100
    assignment = _running_on(_upload(api, alice))
    token = assignment_token(assignment)
    base = f"/api/v1/agent/assignments/{assignment.pk}/checkpoints"
    assert put(client, f"{base}/10/", first, token).status_code == 201
    refused = put(client, f"{base}/20/", zipped(b"y" * 1000), token)
    assert refused.status_code == 409 and "CHECKPOINT_BYTES_MAX_PER_JOB" in refused.json()["detail"]
    assert Checkpoint.objects.filter(job=assignment.job).count() == 1
