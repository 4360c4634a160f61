"""An agent downloads its job's code bundle (and a large dataset) with the assignment's
token, resumably (Range: bytes=N-), checked against the SHA-256; segment encryption at rest
holds across segment boundaries and refuses a damaged or truncated file."""

import hashlib
import io
import os
from decimal import Decimal

import pytest

from marketplace.errors import MarketError
from marketplace.models import Assignment, CodeBundle, Job
from marketplace.services import sealed
from marketplace.services.datasets import sealed_key
from marketplace.services.execution import assignment_token

from .factories import JobFactory, NodeFactory, OfferFactory
from .test_api_bundles import post_file, zip_bundle

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


@pytest.fixture
def bundle_job(api, alice, healthcare):
    # Larger than one segment: the padding file makes the bundle span three.
    content = zip_bundle(extra={"pkg/weights.bin": os.urandom(2 * sealed.SEGMENT + 1234)})
    response = post_file(api.as_user(alice), content, "big.zip")
    assert response.status_code == 201, response.content
    bundle = CodeBundle.objects.get(pk=response.json()["id"])
    job = JobFactory(owner=healthcare, template="", dataset_ref="", bundle=bundle,
                     status=Job.Status.RUNNING)
    node = NodeFactory()
    assignment = Assignment.objects.create(
        job=job, node=node, offer=OfferFactory(node=node), attempt=1, node_rank=0, gpus=1,
        price_per_gpu_hour=Decimal("1"), status=Assignment.Status.RUNNING)
    return assignment, content


def get(client, assignment, token=None, **headers):
    return client.get(f"/api/v1/agent/assignments/{assignment.pk}/bundle/",
                      HTTP_AUTHORIZATION=f"Bearer {token or assignment_token(assignment)}", **headers)


def test_the_agent_downloads_the_bundle_and_resumes_it(client, bundle_job):
    assignment, content = bundle_job
    whole = get(client, assignment)
    assert whole.status_code == 200
    assert int(whole["Content-Length"]) == len(content)
    assert b"".join(whole.streaming_content) == content
    assert whole["X-Content-Sha256"] == hashlib.sha256(content).hexdigest()
    # Cut off mid-segment: the rest from there.
    at = sealed.SEGMENT + 777
    rest = get(client, assignment, HTTP_RANGE=f"bytes={at}-")
    assert rest.status_code == 206
    assert rest["Content-Range"] == f"bytes {at}-{len(content) - 1}/{len(content)}"
    assert b"".join(rest.streaming_content) == content[at:]
    assert get(client, assignment, HTTP_RANGE=f"bytes={len(content)}-").status_code == 416
    assert get(client, assignment, HTTP_RANGE="bytes=0-10").status_code == 416


def test_another_assignments_token_or_none_is_refused(client, bundle_job):
    assignment, _ = bundle_job
    other = JobFactory(status=Job.Status.RUNNING)
    node = NodeFactory()
    stranger = Assignment.objects.create(
        job=other, node=node, offer=OfferFactory(node=node), attempt=1, node_rank=0, gpus=1,
        price_per_gpu_hour=Decimal("1"), status=Assignment.Status.RUNNING)
    assert get(client, assignment, token=assignment_token(stranger)).status_code == 404
    assert client.get(f"/api/v1/agent/assignments/{assignment.pk}/bundle/").status_code == 401
    # A template job has no bundle.
    assert get(client, stranger).status_code == 404


@pytest.mark.parametrize("size", [0, 1, sealed.SEGMENT - 1, sealed.SEGMENT, 3 * sealed.SEGMENT + 5])
def test_sealing_round_trips_at_every_boundary(size):
    key, key_id = sealed_key()
    plain = os.urandom(size)
    out = io.BytesIO()
    assert sealed.seal_stream(io.BytesIO(plain), out, key=key, key_id=key_id) == (
        size, hashlib.sha256(plain).hexdigest())
    stored = out.getvalue()
    assert sealed.plaintext_size(io.BytesIO(stored), len(stored)) == size
    assert b"".join(sealed.unseal_stream(io.BytesIO(stored), key=key, key_id=key_id)) == plain
    if size > sealed.SEGMENT:
        # Cut after a whole segment: the segment before the cut was not sealed as the last.
        cut = stored[:sealed.HEADER_LEN + sealed.SEGMENT + sealed.TAG]
        with pytest.raises(MarketError):
            b"".join(sealed.unseal_stream(io.BytesIO(cut), key=key, key_id=key_id))
    if size:
        flipped = bytearray(stored)
        flipped[-1] ^= 1
        with pytest.raises(MarketError):
            b"".join(sealed.unseal_stream(io.BytesIO(bytes(flipped)), key=key, key_id=key_id))


def test_a_zip_dataset_is_streamed_to_the_agent_resumably(api, alice, healthcare, client):
    from marketplace.models import Dataset

    from .test_api_uploads import send, zip_of

    content = zip_of({f"cls{i % 2}/{i}.bin": os.urandom(50_000) for i in range(40)})
    _, finished = send(api.as_user(alice), content, name="images.zip", chunk=500_000)
    assert finished.status_code == 201, finished.content
    dataset = Dataset.objects.get(pk=finished.json()["id"])
    job = JobFactory(owner=healthcare, template="", dataset_ref=str(dataset.pk), dataset=dataset,
                     status=Job.Status.RUNNING)
    node = NodeFactory()
    assignment = Assignment.objects.create(
        job=job, node=node, offer=OfferFactory(node=node), attempt=1, node_rank=0, gpus=1,
        price_per_gpu_hour=Decimal("1"), status=Assignment.Status.RUNNING)
    url = f"/api/v1/agent/assignments/{assignment.pk}/dataset/"
    auth = f"Bearer {assignment_token(assignment)}"
    whole = client.get(url, HTTP_AUTHORIZATION=auth)
    assert whole.status_code == 200 and whole["Content-Type"] == "application/zip"
    assert b"".join(whole.streaming_content) == content
    rest = client.get(url, HTTP_AUTHORIZATION=auth, HTTP_RANGE="bytes=1000000-")
    assert rest.status_code == 206 and b"".join(rest.streaming_content) == content[1_000_000:]


def test_the_verifier_reads_a_bundle_from_a_path_checked_against_its_sha256(bundle_job):
    from marketplace.services.bundles import bundle_plain_path

    assignment, content = bundle_job
    bundle = assignment.job.bundle
    with bundle_plain_path(bundle) as path:
        assert path.endswith(".zip") and open(path, "rb").read() == content
    CodeBundle.objects.filter(pk=bundle.pk).update(sha256="0" * 64)
    bundle.refresh_from_db()
    with pytest.raises(MarketError, match="does not match"), bundle_plain_path(bundle):
        pass
