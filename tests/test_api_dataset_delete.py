"""DELETE /api/v1/datasets/{id}/: the owner's organization only; refused while a job that
has not finished uses the dataset; the stored file goes with the row."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace.models import AuditEvent, Dataset, Job

from .api_support import actor, assert_error
from .factories import JobFactory
from .test_api_datasets import csv_bytes, stored_files

URL = "/api/v1/datasets/"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


@pytest.fixture
def dataset(api, alice) -> Dataset:
    response = api.as_user(alice).post(
        URL, {"file": SimpleUploadedFile("vitals.csv", csv_bytes(), "text/csv")}, format="multipart")
    assert response.status_code == 201, response.content
    return Dataset.objects.get(pk=response.json()["id"])


def test_the_owner_deletes_it_and_its_file(api, alice, dataset, media,
                                           django_capture_on_commit_callbacks):
    assert len(stored_files(media)) == 1
    with django_capture_on_commit_callbacks(execute=True):
        response = api.as_user(alice).delete(f"{URL}{dataset.pk}/")
    assert response.status_code == 204, response.content
    assert not Dataset.objects.filter(pk=dataset.pk).exists()
    assert stored_files(media) == []
    assert AuditEvent.objects.filter(action="dataset.delete", object_id=str(dataset.pk),
                                     actor=alice).exists()
    gone = assert_error(api.as_user(alice).delete(f"{URL}{dataset.pk}/"), 404)
    assert gone["detail"] == "No dataset with that id among your organization's datasets."


@pytest.mark.parametrize(("who", "expected"), [
    ("anonymous", 401), ("bob", 404), ("carol", 403), ("dave", 403), ("admin_user", 403)])
def test_nobody_else_may(request, api, dataset, media, who, expected):
    assert_error(api.as_user(actor(request, who)).delete(f"{URL}{dataset.pk}/"), expected)
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert len(stored_files(media)) == 1


@pytest.mark.parametrize("status", sorted(set(Job.Status) - Job.Status.TERMINAL - {Job.Status.DRAFT}))
def test_refused_while_an_unfinished_job_uses_it(api, alice, healthcare, dataset, media, status):
    job = JobFactory(owner=healthcare, dataset=dataset, dataset_ref=str(dataset.pk), status=status)
    body = assert_error(api.as_user(alice).delete(f"{URL}{dataset.pk}/"), 409)
    assert body["code"] == "dataset_in_use" and f"#{job.pk}" in body["detail"]
    assert Dataset.objects.filter(pk=dataset.pk).exists() and len(stored_files(media)) == 1


def test_finished_jobs_keep_the_reference_and_lose_the_link(api, alice, healthcare, dataset,
                                                           django_capture_on_commit_callbacks):
    done = [JobFactory(owner=healthcare, dataset=dataset, dataset_ref=str(dataset.pk), status=s)
            for s in sorted(Job.Status.TERMINAL)]
    with django_capture_on_commit_callbacks(execute=True):
        assert api.as_user(alice).delete(f"{URL}{dataset.pk}/").status_code == 204
    for job in done:
        job.refresh_from_db()
        assert job.dataset_id is None and job.dataset_ref == str(dataset.pk)


def test_an_id_that_is_not_a_number_is_404(api, alice):
    assert api.as_user(alice).delete(f"{URL}abc/").status_code == 404
