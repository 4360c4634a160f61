"""The trained model is released only after its work passed verification: on the API
(`/api/v1/jobs/{id}/artifact/` and `artifact_url`) and on the job page. Before that the
model may be a cheat's, and a consumer who has it has what it wanted whether or not the
provider is disputed afterwards. Staff may download it at any time (disputes); another
tenant never."""

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse

from marketplace.models import Job, VerificationReport

from .factories import JobFactory

pytestmark = pytest.mark.django_db
S = Job.Status
R = VerificationReport.Status
MODEL = b"the trained model"


def job_with_model(owner, status: str, *, report: str | None = None, attempt: int = 1) -> Job:
    job = JobFactory(owner=owner, status=status, attempt=attempt, metric_name="accuracy",
                     metric_value=0.9)
    job.artifact.save("m.pt", ContentFile(MODEL), save=True)
    if report is not None:
        VerificationReport.objects.create(job=job, attempt=attempt, threshold=1e-4, status=report)
    return job


# Every way a job holds a model that has not (yet) passed verification.
NOT_VERIFIED = [
    pytest.param(S.MATCHING, None, id="matching"),
    pytest.param(S.RUNNING, None, id="running"),
    pytest.param(S.PAUSED, None, id="paused"),
    pytest.param(S.VERIFYING, R.PENDING, id="verifying"),
    pytest.param(S.VERIFYING, R.RUNNING, id="verifying-checking"),
    pytest.param(S.INTERRUPTED, R.FAILED, id="interrupted-after-failed-verification"),
    pytest.param(S.FAILED, R.FAILED, id="failed-verification"),
    pytest.param(S.CANCELLED, None, id="cancelled"),
    pytest.param(S.SETTLED, None, id="settled-after-cancel"),
    pytest.param(S.REFUNDED, None, id="refunded"),
]


def _download(api, user, job):
    return api.as_user(user).get(reverse("api:job-artifact", args=[job.pk]))


@pytest.mark.parametrize(("status", "report"), NOT_VERIFIED)
def test_a_model_that_has_not_passed_verification_is_not_served(api, alice, healthcare, status, report):
    job = job_with_model(healthcare, status, report=report)
    response = _download(api, alice, job)
    assert response.status_code == 409, response.content[:300]
    assert "verification has passed" in response.json()["detail"]
    detail = api.as_user(alice).get(reverse("api:job-detail", args=[job.pk])).json()
    assert detail["artifact_url"] is None


@pytest.mark.parametrize("status", [S.COMPLETED, S.SETTLED])
def test_the_owner_downloads_the_model_once_verification_passed(api, alice, healthcare, status):
    job = job_with_model(healthcare, status, report=R.PASSED)
    response = _download(api, alice, job)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == MODEL
    detail = api.as_user(alice).get(reverse("api:job-detail", args=[job.pk])).json()
    assert detail["artifact_url"] == reverse("api:job-artifact", args=[job.pk])


def test_a_pass_of_an_earlier_attempt_does_not_release_the_current_model(api, alice, healthcare):
    """The current attempt's model is what the artifact holds: an older pass says nothing of it."""
    job = job_with_model(healthcare, S.COMPLETED, report=R.FAILED, attempt=2)
    VerificationReport.objects.create(job=job, attempt=1, threshold=1e-4, status=R.PASSED)
    assert _download(api, alice, job).status_code == 409


def test_another_tenant_never_gets_the_model(api, bob, healthcare):
    job = job_with_model(healthcare, S.COMPLETED, report=R.PASSED)
    assert _download(api, bob, job).status_code == 404
    assert api.as_user(None).get(reverse("api:job-artifact", args=[job.pk])).status_code in (401, 403)


def test_staff_may_download_an_unverified_model(api, admin_user, healthcare):
    job = job_with_model(healthcare, S.VERIFYING, report=R.PENDING)
    response = _download(api, admin_user, job)
    assert response.status_code == 200 and b"".join(response.streaming_content) == MODEL


def test_a_job_without_a_model_answers_404(api, alice, healthcare):
    job = JobFactory(owner=healthcare, status=S.RUNNING)
    assert _download(api, alice, job).status_code == 404


@pytest.mark.parametrize(("status", "report", "link"), [
    pytest.param(S.RUNNING, None, False, id="running"),
    pytest.param(S.VERIFYING, R.PENDING, False, id="verifying"),
    pytest.param(S.COMPLETED, R.PASSED, True, id="completed"),
])
def test_the_job_page_links_the_model_only_once_verified(client, alice, healthcare, status, report, link):
    job = job_with_model(healthcare, status, report=report)
    client.force_login(alice)
    for page in (reverse("job_detail", args=[job.pk]), reverse("job_progress", args=[job.pk])):
        html = client.get(page).content.decode()
        assert 'id="job-progress"' in html  # the panel that would hold the link was rendered
        assert ('data-testid="artifact-link"' in html) is link, page
        assert ('data-testid="artifact-pending"' in html) is not link, page  # says why not yet
