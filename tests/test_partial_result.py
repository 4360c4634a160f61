"""A job that ended before its model (cancelled, failed, paused, interrupted) gives its
consumer the work it paid for: the newest checkpoint the platform trusts, on the API
(`/api/v1/jobs/{id}/checkpoint/`) and the job page. Never a checkpoint still being checked,
rejected, or written by work that failed verification; never to another tenant."""

import hashlib
from decimal import Decimal

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone

from marketplace.models import Assignment, Checkpoint, Dispute, Job

from .factories import JobFactory, OfferFactory

pytestmark = pytest.mark.django_db
S = Job.Status
C = Checkpoint.Status


def _assignment(job: Job, attempt: int = 1, offer=None) -> Assignment:
    offer = offer or OfferFactory()
    return Assignment.objects.create(job=job, node=offer.node, offer=offer, attempt=attempt,
                                     node_rank=0, gpus=1, price_per_gpu_hour=Decimal("1"),
                                     status=Assignment.Status.CANCELLED)


def _checkpoint(assignment: Assignment, step: int, status: str, body: bytes) -> Checkpoint:
    ckpt = Checkpoint(job=assignment.job, assignment=assignment, step=step, status=status,
                      sha256=hashlib.sha256(body).hexdigest(), size_bytes=len(body),
                      committed_at=timezone.now())
    ckpt.file.save(f"job-{assignment.job_id}-step-{step}.pt", ContentFile(body), save=True)
    return ckpt


def _download(api, user, job):
    return api.as_user(user).get(reverse("api:job-checkpoint", args=[job.pk]))


@pytest.mark.parametrize("status", [S.CANCELLED, S.FAILED, S.PAUSED, S.INTERRUPTED, S.SETTLED])
def test_the_owner_downloads_the_newest_trusted_checkpoint_with_its_sha256(api, alice, healthcare, status):
    job = JobFactory(owner=healthcare, status=status)
    a = _assignment(job)
    trusted = _checkpoint(a, 2600, C.VERIFIED, b"weights at step 2600")
    _checkpoint(a, 2800, C.VALID, b"valid, not yet replayed")  # newer, not trusted yet
    response = _download(api, alice, job)
    assert response.status_code == 200, response.content[:300]
    body = b"".join(response.streaming_content)
    assert hashlib.sha256(body).hexdigest() == trusted.sha256 == response["X-Checkpoint-SHA256"]
    assert response["X-Checkpoint-Step"] == "2600"
    assert f"computemesh-job-{job.pk}-step-2600.pt" in response["Content-Disposition"]


@pytest.mark.parametrize("status", [C.PENDING, C.VALID, C.REJECTED])
def test_an_untrusted_checkpoint_is_never_served(api, alice, admin_user, healthcare, status):
    job = JobFactory(owner=healthcare, status=S.CANCELLED)
    _checkpoint(_assignment(job), 100, status, b"not trusted")
    for user in (alice, admin_user):
        response = _download(api, user, job)
        assert response.status_code == 404, response.content[:300]
        assert "no trusted checkpoint" in response.json()["detail"]


@pytest.mark.parametrize("dispute", [Dispute.Status.OPEN, Dispute.Status.SLASHED])
def test_a_checkpoint_of_work_that_failed_verification_is_never_served(api, alice, healthcare, dispute):
    """Replayed once, then the work behind it was disputed: the older honest one is served."""
    job = JobFactory(owner=healthcare, status=S.FAILED)
    honest, cheat = _assignment(job, attempt=1), _assignment(job, attempt=2)
    _checkpoint(honest, 100, C.VERIFIED, b"honest")
    _checkpoint(cheat, 200, C.VERIFIED, b"cheat")
    Dispute.objects.create(job=job, assignment=cheat, provider=cheat.node.provider,
                           reason=Dispute.Reason.REPLAY_MISMATCH, status=dispute)
    response = _download(api, alice, job)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"honest"
    Dispute.objects.filter(assignment=cheat).update(status=Dispute.Status.DISMISSED)
    assert b"".join(_download(api, alice, job).streaming_content) == b"cheat"


def test_another_tenant_and_the_provider_that_ran_it_are_refused(api, bob, carol, carol_offer, healthcare):
    job = JobFactory(owner=healthcare, status=S.CANCELLED)
    _checkpoint(_assignment(job, offer=carol_offer), 100, C.VERIFIED, b"weights")
    assert _download(api, bob, job).status_code == 404
    # The provider whose node ran it watches the job live, but the result is the consumer's.
    assert _download(api, carol, job).status_code == 404
    assert _download(api, None, job).status_code in (401, 403)


def test_the_job_detail_names_the_partial_result_for_its_organization_only(api, alice, carol, carol_offer,
                                                                          healthcare):
    job = JobFactory(owner=healthcare, status=S.PAUSED)
    detail = reverse("api:job-detail", args=[job.pk])
    assert api.as_user(alice).get(detail).json()["partial_result"] is None
    ckpt = _checkpoint(_assignment(job, offer=carol_offer), 300, C.VERIFIED, b"weights")
    assert api.as_user(alice).get(detail).json()["partial_result"] == {
        "step": 300, "size_bytes": 7, "sha256": ckpt.sha256,
        "url": reverse("api:job-checkpoint", args=[job.pk])}
    # The provider that ran it may watch the job; its partial result is not offered to it.
    watched = api.as_user(carol).get(detail)
    assert watched.status_code == 404 or watched.json()["partial_result"] is None


def test_staff_may_download_it(api, admin_user, healthcare):
    job = JobFactory(owner=healthcare, status=S.CANCELLED)
    _checkpoint(_assignment(job), 100, C.VERIFIED, b"weights")
    response = _download(api, admin_user, job)
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"weights"


def test_the_job_page_links_the_partial_result_with_its_step_and_size(client, alice, bob, healthcare):
    job = JobFactory(owner=healthcare, status=S.CANCELLED)
    a = _assignment(job)
    client.force_login(alice)
    page = reverse("job_detail", args=[job.pk])
    assert 'data-testid="partial-result"' not in client.get(page).content.decode()
    _checkpoint(a, 2600, C.VERIFIED, b"x" * 2048)
    html = client.get(page).content.decode()
    assert 'data-testid="partial-result"' in html
    assert reverse("api:job-checkpoint", args=[job.pk]) in html
    assert "step 2,600" in html or "step 2600" in html
    assert "2.0 KB" in html or "2.0\xa0KB" in html
