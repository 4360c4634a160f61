"""Who may act on a job is decided in one place (selectors/ownership.py): its scopes, and
every entry point refusing another tenant (404, as for a job that does not exist). The job's
live socket is checked the same way in tests/test_job_socket.py (test_who_may_watch_a_job)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from marketplace.errors import NotFound
from marketplace.models import Assignment, Job
from marketplace.selectors.ownership import JobAction, job_for, jobs_for

from .factories import JobFactory, NodeFactory, OfferFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(healthcare, alice, provider_org):
    """alice's organization's job, run by carol's provider organization."""
    job = JobFactory(owner=healthcare, created_by=alice, status=Job.Status.RUNNING)
    node = NodeFactory(provider=provider_org)
    Assignment.objects.create(job=job, node=node, offer=OfferFactory(node=node), attempt=1, node_rank=0,
                              gpus=1, price_per_gpu_hour=Decimal("2"), status=Assignment.Status.RUNNING,
                              started_at=timezone.now() - timedelta(minutes=5))
    return job


@pytest.mark.parametrize(("who", "allowed"), [
    ("alice", {"view", "watch", "own"}),   # the owner organization
    ("bob", set()),                        # another consumer
    ("carol", {"watch"}),                  # the provider running it
    ("dave", set()),                       # another provider
    ("admin_user", {"view", "watch"}),     # staff: see and cancel, spend no one's money
    (None, set()),                         # anonymous
])
def test_the_scopes(request, job, bob, carol, dave, admin_user, who, allowed):
    user = request.getfixturevalue(who) if who else None
    for action in JobAction:
        assert (job in jobs_for(user, action)) is (action in allowed), (who, action)
        if action in allowed:
            assert job_for(user, job.pk, action) == job
        else:
            with pytest.raises(NotFound):
                job_for(user, job.pk, action)


def test_a_scope_narrows_the_rows_it_is_given(job, alice, carol):
    decorated = Job.objects.select_related("owner").filter(status=Job.Status.RUNNING)
    assert job_for(alice, job.pk, qs=decorated).owner.name == "Medisight"
    assert list(jobs_for(carol, JobAction.WATCH, Job.objects.exclude(pk=job.pk))) == []
    with pytest.raises(NotFound):
        job_for(alice, "1 OR 1=1")


HTML = [("get", "job_detail"), ("get", "job_progress"), ("post", "job_cancel"), ("post", "job_fund"),
        ("post", "job_budget"), ("post", "job_dispute")]


@pytest.mark.parametrize(("method", "name"), HTML)
def test_another_tenant_is_refused_on_every_job_page(client, job, bob, method, name):
    client.force_login(bob)
    response = getattr(client, method)(reverse(name, args=[job.pk]), {"budget": "500", "reason": "x" * 30})
    assert response.status_code == 404
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and job.budget == Decimal("100")


API = [("get", ""), ("post", "cancel/"), ("post", "fund/"), ("post", "budget/"), ("get", "fund-calls/"),
       ("get", "artifact/"), ("get", "verification/"), ("get", "metrics/"), ("get", "disputes/"),
       ("post", "disputes/")]


@pytest.mark.parametrize(("method", "path"), API)
def test_another_tenant_is_refused_on_every_job_endpoint(api, job, bob, method, path):
    response = getattr(api.as_user(bob), method)(f"/api/v1/jobs/{job.pk}/{path}", {"budget": "500"},
                                                 format="json")
    assert response.status_code == 404, response.content
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and job.budget == Decimal("100")


def test_staff_see_and_cancel_but_do_not_fund_or_raise_budgets(client, job, admin_user):
    client.force_login(admin_user)
    assert client.get(reverse("job_detail", args=[job.pk])).status_code == 200
    for name in ("job_fund", "job_budget"):
        assert client.post(reverse(name, args=[job.pk]), {"budget": "500"}).status_code == 404
    assert client.post(reverse("job_cancel", args=[job.pk])).status_code == 302
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.budget == Decimal("100")
