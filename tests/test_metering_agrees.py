"""One metering (issue 12, item 11): the settlement's statement, the job page, *My jobs*, the
job API and *My nodes* all say the same money for the same work. Before services/metering.py,
*My nodes* counted a failed attempt to its end and a disputed attempt in full, while the
settlement paid the failed one up to its last committed checkpoint and the disputed one
nothing: the page told the provider 1.60 tUSD earned, the settlement paid for 0.60."""

import re
import secrets
from decimal import Decimal

import pytest
from django.urls import reverse

from marketplace.models import Assignment, Dispute, Escrow, Job
from marketplace.services.payments import settlement_prepare

from .factories import JobFactory
from .payments.support import assignment, checkpoint

pytestmark = pytest.mark.django_db
S, A = Job.Status, Assignment.Status


def _job(owner) -> Job:
    job = JobFactory(owner=owner, status=S.COMPLETED, budget=Decimal("100"))
    Escrow.objects.create(job=job, key="0x" + secrets.token_hex(32), status=Escrow.Status.FUNDED,
                          amount=Decimal("100"))
    return job


@pytest.fixture
def worked(healthcare, carol_node, dave_node):
    """Job 1: carol's attempt 1 failed after 30 min (last committed checkpoint at 10 min),
    attempt 2 succeeded in 20 min. Job 2: carol's attempt 1 failed verification (disputed),
    dave's attempt 2 redid it. 1.20 tUSD/GPU-h, 1 GPU each."""
    first = _job(healthcare)
    failed = assignment(first, carol_node, minutes=30, status=A.FAILED)
    checkpoint(failed, after_minutes=10, step=10)
    assignment(first, carol_node, minutes=20, attempt=2, start=failed.finished_at)
    second = _job(healthcare)
    cheat = assignment(second, carol_node, minutes=30)
    Dispute.objects.create(job=second, assignment=cheat, provider=carol_node.provider,
                           reason=Dispute.Reason.REPLAY_MISMATCH)
    assignment(second, dave_node, minutes=30, attempt=2, start=cheat.finished_at)
    return first, second


def _shown(html: str, testid: str) -> Decimal:
    match = re.search(rf'data-testid="{testid}"[^>]*>([^<]+)<', html)
    assert match, f"{testid} not on the page"
    return Decimal(match.group(1).strip())


def _listed(html: str, job: Job) -> Decimal:
    row = re.search(rf'href="{reverse("job_detail", args=[job.pk])}".*?js-cost">([^<]+)<', html, re.S)
    assert row, f"job {job.pk} not in My jobs"
    return Decimal(row.group(1))


def test_the_settlement_and_every_page_agree_after_a_failed_and_a_disputed_attempt(
        client, api, alice, carol, provider_org, worked):
    first, second = worked
    carol_org = provider_org

    client.force_login(carol)
    earned_before = _shown(client.get(reverse("provider_nodes")).content.decode(), "earned")

    statements = {job.pk: settlement_prepare(job=job).statement for job in (first, second)}
    owed = {job_id: sum((Decimal(line["amount"]) for line in lines), Decimal(0))
            for job_id, lines in statements.items()}
    carol_owed = sum((Decimal(line["amount"]) for lines in statements.values() for line in lines
                      if line["provider"] == carol_org.pk), Decimal(0))
    # 10 min of the failed attempt + 20 min of the good one at 1.20/h; the disputed 30 min: 0.
    assert carol_owed == Decimal("0.6")
    assert owed == {first.pk: Decimal("0.6"), second.pk: Decimal("0.6")}

    assert earned_before == carol_owed  # the page said 1.60 before one metering
    assert _shown(client.get(reverse("provider_nodes")).content.decode(), "earned") == carol_owed

    client.force_login(alice)
    my_jobs = client.get(reverse("jobs")).content.decode()
    api.as_user(alice)
    for job in (first, second):
        assert _shown(client.get(reverse("job_detail", args=[job.pk])).content.decode(),
                      "cost-so-far") == owed[job.pk]
        assert _listed(my_jobs, job) == owed[job.pk]
        assert Decimal(api.get(f"/api/v1/jobs/{job.pk}/").json()["spend"]["spent"]) == owed[job.pk]
