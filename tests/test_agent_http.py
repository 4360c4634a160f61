"""File transfers for agents: scoped tokens, declared hashes, who may upload what."""

import hashlib
import io
import zipfile

import pytest
from django.core.files.base import ContentFile

from marketplace.models import Assignment, Checkpoint, Job
from marketplace.services.execution import assignment_token

from .factories import JobFactory, two_node_parts


@pytest.fixture
def running(db):
    return two_node_parts(JobFactory(status=Job.Status.RUNNING, nodes=2), Assignment.Status.RUNNING)


def zipped(payload: bytes = b"checkpoint bytes") -> bytes:
    """Bytes in torch.save's container (a zip archive): what the endpoint takes without torch."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    return out.getvalue()


def put(client, url, body: bytes, token: str, sha: str | None = None):
    return client.generic("PUT", url, body, content_type="application/octet-stream",
                          HTTP_AUTHORIZATION=f"Bearer {token}",
                          HTTP_X_CONTENT_SHA256=sha or hashlib.sha256(body).hexdigest())


def test_rank_zero_uploads_a_checkpoint_and_a_new_placement_downloads_it(client, running):
    rank0, _ = running
    body = zipped()
    url = f"/api/v1/agent/assignments/{rank0.pk}/checkpoints/50/"
    response = put(client, url, body, assignment_token(rank0))
    assert response.status_code == 201
    ckpt = Checkpoint.objects.get()
    assert ckpt.sha256 == hashlib.sha256(body).hexdigest() and ckpt.size_bytes == len(body)
    assert put(client, url, body, assignment_token(rank0)).status_code == 409  # once per step
    # Not committed by a `checkpoint` message yet: nobody resumes from it.
    get = client.get(url, HTTP_AUTHORIZATION=f"Bearer {assignment_token(rank0)}")
    assert get.status_code == 404
    Checkpoint.objects.update(committed_at=ckpt.created_at)
    # Committed but not yet checked on the verify queue: still not handed to anyone.
    assert ckpt.status == Checkpoint.Status.PENDING
    get = client.get(url, HTTP_AUTHORIZATION=f"Bearer {assignment_token(rank0)}")
    assert get.status_code == 404
    # Valid, but the work up to it not replayed yet: still not handed to anyone.
    Checkpoint.objects.update(status=Checkpoint.Status.VALID)
    get = client.get(url, HTTP_AUTHORIZATION=f"Bearer {assignment_token(rank0)}")
    assert get.status_code == 404
    Checkpoint.objects.update(status=Checkpoint.Status.VERIFIED)
    get = client.get(url, HTTP_AUTHORIZATION=f"Bearer {assignment_token(rank0)}")
    assert get.status_code == 200 and b"".join(get.streaming_content) == body


def test_garbage_and_steps_before_the_resume_point_are_refused_at_upload(client, running):
    rank0, _ = running
    url = f"/api/v1/agent/assignments/{rank0.pk}/checkpoints/50/"
    refused = put(client, url, b"\x00garbage, not a checkpoint", assignment_token(rank0))
    assert refused.status_code == 400 and "zip archive" in refused.json()["detail"]
    Assignment.objects.filter(pk=rank0.pk).update(resume_step=50)
    refused = put(client, url, zipped(), assignment_token(rank0))
    assert refused.status_code == 400 and "not after step 50" in refused.json()["detail"]
    assert not Checkpoint.objects.exists()


@pytest.mark.parametrize("case", ["no_token", "bad_token", "other_assignment", "bad_sha", "no_sha",
                                  "not_rank_zero", "finished"])
def test_bad_uploads_are_refused_and_store_nothing(client, running, case):
    rank0, rank1 = running
    token, target, sha = assignment_token(rank0), rank0, None
    if case == "bad_token":
        token = "forged"
    elif case == "other_assignment":
        token = assignment_token(rank1)
    elif case == "bad_sha":
        sha = "0" * 64
    elif case == "no_sha":
        sha = "not-a-hash"
    elif case == "not_rank_zero":
        token, target = assignment_token(rank1), rank1
    elif case == "finished":
        Assignment.objects.filter(pk=rank0.pk).update(status=Assignment.Status.SUCCEEDED)
    url = f"/api/v1/agent/assignments/{target.pk}/checkpoints/10/"
    if case == "no_token":
        response = client.generic("PUT", url, b"x", content_type="application/octet-stream")
    else:
        response = put(client, url, b"x", token, sha)
    assert 400 <= response.status_code < 500
    assert "detail" in response.json()
    assert not Checkpoint.objects.exists()


def test_the_dataset_is_served_only_with_a_token_for_that_job(client, running):
    rank0, _ = running
    job = rank0.job
    from marketplace.models import Dataset

    ds = Dataset(owner=job.owner, name="d.csv", size_bytes=4, rows=1, columns=["a"], sha256="x")
    ds.file.save("d.csv", ContentFile(b"a\n1\n"), save=True)
    Job.objects.filter(pk=job.pk).update(dataset=ds, dataset_ref=str(ds.pk))
    url = f"/api/v1/agent/assignments/{rank0.pk}/dataset/"
    ok = client.get(url, HTTP_AUTHORIZATION=f"Bearer {assignment_token(rank0)}")
    assert ok.status_code == 200 and b"".join(ok.streaming_content) == b"a\n1\n"
    assert client.get(url).status_code == 401
    assert client.get(url, HTTP_AUTHORIZATION="Bearer nope").status_code == 404
