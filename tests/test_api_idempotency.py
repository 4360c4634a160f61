"""The Idempotency-Key header on POST /api/v1/jobs/ and POST /api/v1/datasets/: the same
key from the same user within 24 hours replays the first response and creates nothing;
the same key with another request is refused (422)."""

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from marketplace.api import jobs as job_views
from marketplace.models import Dataset, IdempotencyKey, Job
from marketplace.services.idempotency import idempotency_keys_prune

from .api_support import assert_error, job_body
from .test_api_datasets import csv_bytes

JOBS, DATASETS = "/api/v1/jobs/", "/api/v1/datasets/"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def submit(client, key: str | None, **overrides):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(JOBS, job_body(**overrides), format="json", **headers)


def upload(client, key: str, content: bytes, name: str = "vitals"):
    return client.post(DATASETS, {"file": SimpleUploadedFile("vitals.csv", content, "text/csv"),
                                  "name": name}, format="multipart", HTTP_IDEMPOTENCY_KEY=key)


def test_a_resent_submit_returns_the_first_response_and_creates_one_job(api, alice):
    client, key, body = api.as_user(alice), str(uuid.uuid4()), job_body()
    first = client.post(JOBS, body, format="json", HTTP_IDEMPOTENCY_KEY=key)
    again = client.post(JOBS, body, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert first.status_code == again.status_code == 201, first.content
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true" and not first.has_header("Idempotent-Replayed")
    assert Job.objects.count() == 1
    row = IdempotencyKey.objects.get()
    assert (row.user, row.key, row.response_status, len(row.fingerprint)) == (alice, key, 201, 64)


def test_the_same_key_with_another_body_is_refused(api, alice):
    client, key = api.as_user(alice), str(uuid.uuid4())
    assert submit(client, key).status_code == 201
    body = assert_error(submit(client, key, name="Another model"), 422, "Idempotency-Key")
    assert body["code"] == "idempotency_key_reused" and "different request" in body["detail"]
    assert Job.objects.count() == 1


def test_a_key_is_the_users_own(api, alice, bob):
    key = str(uuid.uuid4())
    assert submit(api.as_user(alice), key).status_code == 201
    response = submit(api.as_user(bob), key)  # bob's first use of it: a job of bob's
    assert response.status_code == 201 and not response.has_header("Idempotent-Replayed")
    assert sorted(Job.objects.values_list("owner__name", flat=True)) == ["GridCast", "Medisight"]


def test_without_a_key_every_submit_creates(api, alice):
    client = api.as_user(alice)
    assert submit(client, None).status_code == submit(client, None).status_code == 201
    assert Job.objects.count() == 2 and not IdempotencyKey.objects.exists()


def test_a_refused_request_is_not_kept_and_may_be_corrected(api, alice):
    client, key = api.as_user(alice), str(uuid.uuid4())
    assert_error(submit(client, key, nodes=0), 400, "nodes")
    assert not IdempotencyKey.objects.exists() and not Job.objects.exists()
    assert submit(client, key).status_code == 201


def test_after_24_hours_the_key_is_forgotten(api, alice):
    client, key = api.as_user(alice), str(uuid.uuid4())
    assert submit(client, key).status_code == 201
    IdempotencyKey.objects.update(created_at=IdempotencyKey.objects.get().created_at - timedelta(hours=25))
    response = submit(client, key, name="Next week's model")
    assert response.status_code == 201 and Job.objects.count() == 2
    assert IdempotencyKey.objects.get().response_body["id"] == response.json()["id"]
    # The user's next new key clears their expired ones; idempotency_keys_prune() clears all.
    IdempotencyKey.objects.update(created_at=IdempotencyKey.objects.get().created_at - timedelta(hours=25))
    assert submit(client, str(uuid.uuid4()), name="Third").status_code == 201
    assert IdempotencyKey.objects.count() == 1
    IdempotencyKey.objects.update(created_at=IdempotencyKey.objects.get().created_at - timedelta(hours=25))
    assert idempotency_keys_prune() == 1 and not IdempotencyKey.objects.exists()


@pytest.mark.parametrize("key", ["", "   ", "x" * 256, "clé-é"])
def test_a_malformed_key_is_400(api, alice, key):
    assert_error(submit(api.as_user(alice), key), 400, "Idempotency-Key")
    assert not Job.objects.exists()


def test_a_resent_upload_stores_one_dataset(api, alice, media):
    client, key = api.as_user(alice), str(uuid.uuid4())
    first = upload(client, key, csv_bytes())
    again = upload(client, key, csv_bytes())  # a new multipart boundary, the same request
    assert first.status_code == again.status_code == 201, first.content
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert Dataset.objects.count() == 1
    assert_error(upload(client, key, csv_bytes(rows=20)), 422, "Idempotency-Key")
    assert_error(upload(client, key, csv_bytes(), name="renamed"), 422, "Idempotency-Key")
    assert Dataset.objects.count() == 1 and len([p for p in media.rglob("*") if p.is_file()]) == 1


def test_the_same_key_on_the_other_endpoint_is_refused(api, alice):
    client, key = api.as_user(alice), str(uuid.uuid4())
    assert upload(client, key, csv_bytes()).status_code == 201
    assert_error(submit(client, key), 422, "Idempotency-Key")


@pytest.mark.django_db(transaction=True)
def test_two_racing_submits_with_one_key_create_one_job(healthcare, alice, monkeypatch):
    token = Token.objects.create(user=alice).key
    submit_job = job_views.job_services.job_submit

    def slow_submit(**kwargs):
        # Both requests are past the key's lookup, each with its job, before either stores it.
        job = submit_job(**kwargs)
        time.sleep(0.5)
        return job

    monkeypatch.setattr(job_views.job_services, "job_submit", slow_submit)
    key, body = str(uuid.uuid4()), job_body()
    barrier, responses = threading.Barrier(2), []

    def send():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        barrier.wait()
        try:
            responses.append(client.post(JOBS, body, format="json", HTTP_IDEMPOTENCY_KEY=key))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in responses] == [201, 201]
    assert responses[0].json()["id"] == responses[1].json()["id"]
    assert Job.objects.count() == 1 and IdempotencyKey.objects.count() == 1
