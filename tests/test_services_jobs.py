from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace.errors import MarketError, PermissionDenied
from marketplace.job_states import IllegalTransition
from marketplace.models import Job, JobEvent
from marketplace.services.job_spec import JobSpec
from marketplace.services.jobs import job_cancel, job_submit

from .factories import JobFactory


def spec(**over) -> JobSpec:
    base = dict(name="Sepsis risk", template="tabular-classifier", dataset="sample:breast-cancer",
                nodes=1, gpus_per_node=2, max_price_per_gpu_hour=Decimal("2"),
                budget=Decimal("50"), deadline=timezone.now() + timedelta(days=2))
    return JobSpec(**{**base, **over})


def test_submit_fills_defaults_and_logs_the_timeline(healthcare, alice):
    job = job_submit(owner=healthcare, spec=spec(params={"epochs": 3}), actor=alice)
    # Without on-chain escrow a submitted job counts as funded at once.
    assert job.status == Job.Status.FUNDED
    assert job.params["epochs"] == 3 and job.params["batch_size"] == 64
    submitted, funded = job.events.all()
    assert (submitted.from_status, submitted.to_status, submitted.reason) == (
        "draft", "submitted", "submitted")
    assert "alice" in submitted.message
    assert (funded.to_status, funded.reason) == ("funded", "escrow_disabled")


def test_with_escrow_enabled_a_job_waits_for_funding(healthcare, settings):
    settings.ESCROW_ENABLED = True
    job = job_submit(owner=healthcare, spec=spec())
    assert job.status == Job.Status.SUBMITTED
    assert [e.reason for e in job.events.all()] == ["submitted"]


@pytest.mark.parametrize(("over", "field"), [
    ({"template": "gpt-17"}, "template"),
    ({"params": {"epochs": 0}}, "params.epochs"),
    ({"params": {"warp_speed": 9}}, "params"),
    ({"params": [1, 2]}, "params"),
    ({"dataset": "sample:mnist"}, "dataset"),
    ({"dataset": "999999"}, "dataset"),
    ({"dataset": "s3://bucket/x.csv"}, "dataset"),
    ({"nodes": 0}, "nodes"),
    ({"nodes": 33}, "nodes"),
    ({"gpus_per_node": 0}, "gpus_per_node"),
    ({"gpu_models": ["GTX 9999"]}, "gpu_models"),
    ({"gpu_models": ["cpu", "L40S"]}, "gpu_models"),
    ({"regions": ["ATLANTIS"]}, "regions"),
    ({"compliance": ["pci"]}, "compliance"),
    ({"min_reliability": Decimal("1.5")}, "min_reliability"),
    ({"max_price_per_gpu_hour": Decimal("0")}, "max_price_per_gpu_hour"),
    ({"max_price_per_gpu_hour": Decimal("-2")}, "max_price_per_gpu_hour"),
    ({"budget": Decimal("0")}, "budget"),
    ({"budget": Decimal("1.0000001")}, "budget"),
    ({"deadline": timezone.now() - timedelta(minutes=1)}, "deadline"),
    ({"deadline": timezone.now() + timedelta(minutes=30), "duration_hours": Decimal("2")}, "deadline"),
    ({"duration_hours": Decimal("0")}, "duration_hours"),
    ({"name": ""}, "name"),
    ({"name": "n" * 121}, "name"),
])
def test_bad_specs_name_the_field_and_write_nothing(healthcare, over, field):
    with pytest.raises(MarketError) as err:
        job_submit(owner=healthcare, spec=spec(**over))
    assert err.value.field == field, err.value.message
    assert not Job.objects.exists() and not JobEvent.objects.exists()


def test_providers_cannot_submit_jobs(provider_org):
    with pytest.raises(PermissionDenied):
        job_submit(owner=provider_org, spec=spec())


def test_cancel_and_cancel_again(healthcare, alice):
    job = job_submit(owner=healthcare, spec=spec(), actor=alice)
    job_cancel(job=job, actor=alice)
    assert Job.objects.get(pk=job.pk).status == Job.Status.CANCELLED
    again = job_cancel(job=job, actor=alice)  # a retry: the same cancelled job, nothing more
    assert again.status == Job.Status.CANCELLED
    assert job.events.filter(to_status="cancelled").count() == 1
    assert job.events.filter(reason="assignments_stopped").count() == 0


def test_a_completed_job_cannot_be_cancelled(db):
    job = JobFactory(status=Job.Status.COMPLETED)
    with pytest.raises(IllegalTransition):
        job_cancel(job=job)
    assert Job.objects.get(pk=job.pk).status == Job.Status.COMPLETED


def test_an_uploaded_dataset_must_have_the_label_column(healthcare):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from marketplace.services.datasets import dataset_upload

    rows = "\n".join(f"{i},{i % 2}" for i in range(20))
    ds = dataset_upload(owner=healthcare, actor=None, name="x.csv",
                        uploaded_file=SimpleUploadedFile("x.csv", f"age,outcome\n{rows}\n".encode()))
    with pytest.raises(MarketError) as err:
        job_submit(owner=healthcare, spec=spec(dataset=str(ds.pk)))
    assert err.value.field == "params.label_column" and "outcome" in err.value.message
    job = job_submit(owner=healthcare, spec=spec(dataset=str(ds.pk), params={"label_column": "outcome"}))
    assert job.dataset == ds
