"""Issue 13 item 1: the per-job secret a job's nodes authenticate each other with goes to
that job's agents in `assignment.start`, to every node of the job alike, and nowhere else:
not to another job's nodes, not through the API or the job page."""

import re

import pytest
from django.urls import reverse

from marketplace.models import Job
from marketplace.services import execution, placement

from .factories import JobFactory
from .test_diloco_spec import DILOCO, cpu_offers  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db


def placed(healthcare) -> tuple[Job, list]:
    job = JobFactory(owner=healthcare, nodes=2, gpus_per_node=1, gpu_models=["cpu"], sync=DILOCO,
                     status=Job.Status.MATCHING)
    return job, placement.job_place(job_id=job.pk)


def test_every_node_of_a_job_gets_the_same_secret_and_another_job_another(healthcare, cpu_offers):  # noqa: F811
    job, (rank0, rank1) = placed(healthcare)
    secret = execution.start_message(rank0)["job_secret"]
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    assert execution.start_message(rank1)["job_secret"] == secret
    other, (other0, _) = placed(healthcare)
    assert execution.start_message(other0)["job_secret"] != secret


def test_the_secret_is_not_in_the_api_or_the_job_page(healthcare, cpu_offers, alice, api, client):  # noqa: F811
    job, (rank0, _) = placed(healthcare)
    secret = execution.start_message(rank0)["job_secret"]
    api.as_user(alice)
    body = api.get(f"/api/v1/jobs/{job.pk}/").content.decode()
    assert str(job.pk) in body and secret not in body
    client.force_login(alice)
    page = client.get(reverse("job_detail", args=[job.pk]))
    assert page.status_code == 200 and secret not in page.content.decode()
