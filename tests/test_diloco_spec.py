"""The job's `sync` field: validated like every hyper-parameter (400s naming the field in
the API, errors on the right field of the form), stored, quoted, shown on the job page and
handed to the agents; and the platform's side of a lost DiLoCo node (replaced, not
restarted)."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from marketplace.models import Assignment, Job
from marketplace.services import execution, placement
from marketplace.services.job_spec import sync_traffic_ratio

from .api_support import assert_error, job_body
from .factories import JobFactory, NodeFactory, OfferFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/jobs/"
DILOCO = {"mode": "diloco", "inner_steps": 100, "outer_lr": 0.7, "outer_momentum": 0.9,
          "precision": "int8"}


@pytest.fixture
def cpu_offers(provider_org):
    offers = []
    for i in range(3):
        node = NodeFactory(provider=provider_org, name=f"cpu-{i}", gpu_model="cpu", gpu_count=2,
                           gpu_memory_gb=0, region="EU-DE")
        offers.append(OfferFactory(node=node, price_per_gpu_hour=Decimal("0.05") + i))
    return offers


def cpu_body(**over):
    return job_body(**{"gpu_models": ["cpu"], "gpus_per_node": 1, "nodes": 2, **over})


@pytest.mark.parametrize(("sync", "field", "words"), [
    ("diloco", "sync", "JSON object"),
    ({"mode": "gossip"}, "sync.mode", "Unknown sync mode 'gossip'"),
    ({"mode": "diloco", "inner_steps": 0}, "sync.inner_steps", "minimum of 1"),
    ({"mode": "diloco", "inner_steps": 2.5}, "sync.inner_steps", "not of type 'integer'"),
    ({"mode": "diloco", "inner_steps": True}, "sync.inner_steps", "not of type 'integer'"),
    ({"mode": "diloco", "outer_lr": 0}, "sync.outer_lr", "less than or equal to the minimum of 0"),
    ({"mode": "diloco", "outer_momentum": 1}, "sync.outer_momentum", "1"),
    ({"mode": "diloco", "precision": "int4"}, "sync.precision", "'int4' is not one of"),
    ({"mode": "diloco", "H": 10}, "sync", "Settings of diloco: inner_steps, outer_lr"),
    ({"mode": "ddp", "inner_steps": 10}, "sync", "Settings of ddp: none"),
])
def test_bad_sync_settings_are_a_400_naming_the_setting(api, alice, sync, field, words):
    response = api.as_user(alice).post(URL, cpu_body(sync=sync), format="json")
    data = assert_error(response, 400, field)
    assert words in data["detail"], data["detail"]
    assert not Job.objects.exists()


def test_diloco_needs_two_machines(api, alice):
    data = assert_error(api.as_user(alice).post(URL, cpu_body(nodes=1, sync=DILOCO), format="json"),
                        400, "sync.mode")
    assert "2 or more nodes" in data["detail"]


def test_sync_is_stored_with_its_defaults_and_shown_by_the_api(api, alice):
    response = api.as_user(alice).post(URL, cpu_body(sync={"mode": "diloco", "precision": "fp16"}),
                                       format="json")
    assert response.status_code == 201, response.content
    expected = {"mode": "diloco", "inner_steps": 50, "outer_lr": 0.7, "outer_momentum": 0.9,
                "precision": "fp16"}
    assert response.json()["sync"] == expected
    assert Job.objects.get().sync == expected
    plain = api.as_user(alice).post(URL, cpu_body(), format="json").json()
    assert plain["sync"] == {"mode": "ddp"}


def test_the_quote_states_the_sync_and_its_traffic_saving(api, alice, cpu_offers):
    data = api.as_user(alice).post(URL + "quote/", cpu_body(sync=DILOCO), format="json").json()
    assert data["feasible"] and data["sync"] == DILOCO
    # Two nodes of one process: DDP sends 4 B per parameter per step out of each node;
    # DiLoCo sends 1 B (int8) per parameter once every 100 steps.
    assert data["traffic_vs_ddp"] == pytest.approx(400)
    assert api.as_user(alice).post(URL + "quote/", cpu_body(), format="json").json()["traffic_vs_ddp"] is None
    # Four nodes: DDP's ring sends 1.5 × 4 B per parameter per step out of each node, the
    # leaders' reduce-scatter and all-gather 1.5 × 1 B once every 100 steps.
    assert sync_traffic_ratio(DILOCO, nodes=4, gpus_per_node=1) == pytest.approx(100 * 1.5 * 4 / 1.5)


def form_data(**overrides) -> dict:
    data = {
        "name": "Sepsis risk v3", "template": "tabular-classifier",
        "dataset": "sample:breast-cancer", "params": json.dumps({"epochs": 5}),
        "nodes": "2", "gpus_per_node": "1", "min_gpu_memory_gb": "0", "gpu_models": ["cpu"],
        "regions": "", "compliance": [], "min_reliability": "", "max_price_per_gpu_hour": "2.50",
        "budget": "100", "duration_hours": "2", "tz_offset": "0",
        "deadline": (timezone.now() + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M"),
        "sync_mode": "diloco", "inner_steps": "20", "outer_lr": "0.7", "outer_momentum": "0.9",
        "precision": "int8",
    }
    data.update(overrides)
    return data


def test_the_form_shows_a_bad_sync_setting_on_its_field(client, alice):
    client.force_login(alice)
    response = client.post(reverse("job_new"), form_data(inner_steps="0", precision="fp16"))
    assert response.status_code == 200
    form = response.context["form"]
    assert "minimum of 1" in " ".join(form.errors["inner_steps"])
    response = client.post(reverse("job_new"), form_data(nodes="1"))
    assert "2 or more nodes" in " ".join(response.context["form"].errors["sync_mode"])
    assert not Job.objects.exists()


def test_the_form_submits_diloco_and_the_job_page_shows_it(client, alice):
    client.force_login(alice)
    response = client.post(reverse("job_new"), form_data())
    assert response.status_code == 302, response.context["form"].errors if response.context else ""
    job = Job.objects.get()
    assert job.sync == {"mode": "diloco", "inner_steps": 20, "outer_lr": 0.7, "outer_momentum": 0.9,
                        "precision": "int8"}
    page = client.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert "DiLoCo: every 20 steps, int8 pseudo-gradients" in page
    Job.objects.filter(pk=job.pk).update(comm_bytes=2_000_000, comm_bytes_ddp=500_000_000)
    page = client.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert "2 MB sent to the other nodes; DDP would have sent 500 MB: 250× less." in page


def test_the_quote_panel_states_the_sync(client, alice, cpu_offers):
    client.force_login(alice)
    html = client.post(reverse("job_quote"), form_data(inner_steps="50", precision="fp32")).content.decode()
    assert 'data-testid="quote-sync"' in html and "DiLoCo: every 50 steps, fp32" in html
    assert "about 50× less traffic" in html


def test_agents_are_told_how_to_synchronise(alice, healthcare, cpu_offers):
    job = JobFactory(owner=healthcare, template="tabular-classifier", dataset_ref="sample:breast-cancer",
                     nodes=2, gpus_per_node=1, gpu_models=["cpu"], sync=DILOCO, status=Job.Status.MATCHING)
    assignments = placement.job_place(job_id=job.pk)
    assert len(assignments) == 2
    message = execution.start_message(assignments[0])
    assert message["sync"] == DILOCO and message["peer_timeout_s"] > 0
    # A job from before `sync` existed (stored empty) runs DDP, and says so.
    ddp = JobFactory(owner=healthcare, nodes=1, gpus_per_node=1, gpu_models=["cpu"], sync={},
                     status=Job.Status.MATCHING)
    (only,) = placement.job_place(job_id=ddp.pk)
    assert execution.start_message(only)["sync"] == {"mode": "ddp"}


def running_diloco_job(healthcare, cpu_offers) -> tuple[Job, list[Assignment]]:
    job = JobFactory(owner=healthcare, nodes=2, gpus_per_node=1, gpu_models=["cpu"], sync=DILOCO,
                     status=Job.Status.MATCHING)
    parts = placement.job_place(job_id=job.pk)
    Assignment.objects.filter(job=job).update(status=Assignment.Status.ACCEPTED)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    return job, parts


def test_a_lost_diloco_node_is_replaced_in_the_same_attempt_without_a_restart(healthcare, cpu_offers):
    job, (rank0, rank1) = running_diloco_job(healthcare, cpu_offers)
    assert execution.node_lost(node_id=rank1.node_id) == 1
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and job.attempt == 1  # not interrupted
    rank0.refresh_from_db()
    assert rank0.status == Assignment.Status.ACCEPTED  # the survivor keeps training
    replacement = job.assignments.get(node_rank=1, status=Assignment.Status.DISPATCHED)
    assert replacement.attempt == 1 and replacement.node_id not in (rank0.node_id, rank1.node_id)
    assert rank1.node_id in job.excluded_nodes
    start = execution.start_message(replacement)
    assert start["node_rank"] == 1 and start["sync"] == DILOCO
    reasons = list(job.events.values_list("reason", flat=True))
    assert "node_dropped" in reasons and "node_replaced" in reasons


def test_without_a_free_node_the_job_goes_on_short_and_fills_the_rank_later(healthcare, cpu_offers):
    job, (rank0, rank1) = running_diloco_job(healthcare, cpu_offers)
    cpu_offers[2].node.offers.update(status="paused")
    execution.node_lost(node_id=rank1.node_id)
    assert not job.assignments.filter(status__in=Assignment.ACTIVE, node_rank=1).exists()
    assert placement.diloco_jobs_short() == [job.pk]
    cpu_offers[2].node.offers.update(status="active")
    assert execution.diloco_fill_missing() == 1
    assert job.assignments.filter(status=Assignment.Status.DISPATCHED, node_rank=1).count() == 1
    assert placement.diloco_jobs_short() == []


def test_a_diloco_job_completes_when_rank_0_ends_and_cancels_a_replacement_not_yet_started(
        healthcare, cpu_offers):
    job, (rank0, rank1) = running_diloco_job(healthcare, cpu_offers)
    execution.node_lost(node_id=rank1.node_id)
    Job.objects.filter(pk=job.pk).update(artifact_sha256="a" * 64)
    rank0 = Assignment.objects.get(pk=rank0.pk)
    execution.assignment_finished(rank0, {"status": "succeeded", "artifact_sha256": "a" * 64,
                                          "metric": "accuracy", "value": 0.9, "step": 10,
                                          "param_digests": ["x"]})
    job.refresh_from_db()
    assert job.status == Job.Status.VERIFYING  # then completed once the work is verified
    assert job.assignments.get(node_rank=1, status=Assignment.Status.CANCELLED)
