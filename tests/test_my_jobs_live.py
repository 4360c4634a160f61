"""*My jobs* adds new jobs live: the dashboard socket tells the organization of each job it
submits (never another organization's), and the page asks for the job's row
(`/jobs/{id}/row/`), which answers only for the caller's jobs and under the page's filters."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.urls import reverse
from rest_framework.authtoken.models import Token

from marketplace import job_states
from marketplace.models import Job
from webapp.asgi import application

from .factories import JobFactory

ORIGIN = (b"origin", b"http://testserver")


def _socket(user):
    token = Token.objects.get_or_create(user=user)[0].key
    return WebsocketCommunicator(application, "/ws/dashboard/",
                                 headers=[ORIGIN, (b"authorization", f"Token {token}".encode())])


def _submit(job: Job) -> None:
    job_states.transition(job_id=job.pk, to=Job.Status.SUBMITTED, reason="submitted", message="Submitted.")


@pytest.mark.django_db(transaction=True)
def test_the_dashboard_socket_tells_of_a_new_job_of_the_organization_only(alice, healthcare, energy):
    theirs = JobFactory(owner=energy, name="theirs", status=Job.Status.DRAFT)
    mine = JobFactory(owner=healthcare, name="mine", status=Job.Status.DRAFT)
    comm = _socket(alice)

    async def go():
        ok, _ = await comm.connect()
        assert ok
        await comm.receive_from(timeout=5)  # the summary
        await database_sync_to_async(_submit)(theirs)
        await database_sync_to_async(_submit)(mine)
        got = json.loads(await comm.receive_from(timeout=5))
        money = json.loads(await comm.receive_from(timeout=5))  # the Account page refreshes too
        quiet = await comm.receive_nothing(timeout=1)
        await comm.disconnect()
        return got, money, quiet

    got, money, quiet = asyncio.run(go())
    assert got["type"] == "job" and got["job"]["id"] == mine.pk and got["job"]["status"] == "submitted"
    assert money == {"type": "account", "job_id": mine.pk}
    assert quiet, "another organization's job reached alice's socket"


@pytest.mark.django_db
def test_the_row_is_the_callers_only_and_under_the_pages_filters(client, alice, bob, healthcare):
    job = JobFactory(owner=healthcare, name="Sepsis risk", status=Job.Status.SUBMITTED)
    url = reverse("job_row", args=[job.pk])
    client.force_login(alice)
    response = client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith(f'<tr data-job-id="{job.pk}" data-status="submitted">')
    assert "Sepsis risk" in html
    assert client.get(url, {"q": "sepsis"}).status_code == 200
    assert client.get(url, {"q": "something else"}).status_code == 204
    assert client.get(url, {"status": "cancelled"}).status_code == 204
    client.force_login(bob)
    refused = client.get(url)
    assert refused.status_code == 204 and refused.content == b""
    client.logout()
    assert client.get(url).status_code == 302  # to the login page


@pytest.mark.django_db
def test_my_jobs_without_jobs_has_the_hidden_table_the_script_fills(client, alice):
    client.force_login(alice)
    html = client.get(reverse("jobs")).content.decode()
    assert 'data-testid="no-jobs"' in html
    assert 'data-testid="jobs-table" hidden' in html and "data-live-jobs=" in html
