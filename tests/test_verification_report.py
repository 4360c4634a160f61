"""The verification report on the job page and as a download: what it shows, and that only
those who may see the job may see it (another tenant gets a 404). The reports come from
the verifier in test_verification_e2e.py; here they are written directly."""

from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from marketplace.models import Assignment, Dispute, Job, VerificationReport

from .factories import JobFactory, NodeFactory, OfferFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def verified_job(alice, healthcare, provider_org):
    node = NodeFactory(provider=provider_org)
    job = JobFactory(owner=healthcare, status=Job.Status.COMPLETED, metric_name="accuracy",
                     metric_value=0.96)
    cheat = Assignment.objects.create(job=job, node=node, offer=OfferFactory(node=node), attempt=1,
                                      node_rank=0, gpus=1, price_per_gpu_hour=Decimal("1"),
                                      status=Assignment.Status.SUCCEEDED)
    failed = VerificationReport.objects.create(
        job=job, attempt=1, status="failed", threshold=1e-4, replay_steps=22, train_steps=224,
        segments=[{"from_step": 11, "to_step": 22, "rel_l2": 0.031, "passed": False}],
        metric_name="accuracy", metric_reported=0.96, metric_measured=0.96,
        reasons=["Replaying steps 11..22 gives parameters 3.10e-02 (relative L2) from the committed "
                 "checkpoint at step 22; the threshold is 1e-04.", "note: checkpoint at step 33 was "
                 "committed after the next one was written"])
    Dispute.objects.create(job=job, assignment=cheat, provider=provider_org, verification=failed,
                           reason="replay_mismatch", detail="replay")
    VerificationReport.objects.create(
        job=job, attempt=2, status="passed", threshold=1e-4, replay_steps=22, train_steps=224,
        segments=[{"from_step": 44, "to_step": 55, "rel_l2": 0.0, "passed": True}],
        metric_name="accuracy", metric_reported=0.96, metric_measured=0.96)
    return job


def test_the_job_page_shows_each_attempts_verification(client, alice, verified_job):
    client.force_login(alice)
    page = client.get(f"/jobs/{verified_job.pk}/").content.decode()
    section = page[page.index('data-testid="verification"'):]
    assert "Placement 1" in section and "Placement 2" in section
    assert "3.10e-02" in section and "mismatch" in section and "reproduced" in section
    assert "Dispute #" in section and "replay_mismatch" in section
    assert "committed after the next one was written" in section
    assert f"/api/v1/jobs/{verified_job.pk}/verification/" in section


def test_the_report_downloads_for_the_owner_and_is_a_404_for_another_tenant(alice, bob, verified_job):
    api = APIClient()
    api.force_authenticate(alice)
    job = api.get(f"/api/v1/jobs/{verified_job.pk}/").json()
    verification = job["verification"]  # and how it was verified, said up front
    assert (verification["status"], verification["report_url"], verification["method"]["method"]) == (
        "passed", f"/api/v1/jobs/{verified_job.pk}/verification/", "replay")
    response = api.get(job["verification"]["report_url"])
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    report = response.json()
    assert [(r["attempt"], r["status"]) for r in report["reports"]] == [(1, "failed"), (2, "passed")]
    first = report["reports"][0]
    assert first["compute_share"] == pytest.approx(22 / 224)
    assert first["disputes"][0]["reason"] == "replay_mismatch"
    assert first["notes"] == ["checkpoint at step 33 was committed after the next one was written"]
    assert len(first["findings"]) == 1

    api.force_authenticate(bob)
    assert api.get(job["verification"]["report_url"]).status_code == 404
    assert api.get(f"/api/v1/jobs/{verified_job.pk}/").status_code == 404


def test_the_page_is_a_404_for_another_tenant(client, bob, verified_job):
    client.force_login(bob)
    assert client.get(f"/jobs/{verified_job.pk}/").status_code == 404
