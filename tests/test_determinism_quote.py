"""A consumer's task is checked for determinism before the consumer pays (issue 16): the
quote (API and the form's quote panel) and the job (API and page) say "checking", then
"verified by step replay" or "held-out evaluation only"; one stored check per task, data,
params and world size; the check itself replays the task's steps twice with the verifier's
torch half (in its sandbox where bubblewrap runs). The whole flow on real agents is
tests/test_bundle_verification_e2e.py."""

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from marketplace.models import CodeBundle, DeterminismCheck, Job
from marketplace.selectors.determinism import MESSAGES, job_verification_method
from marketplace.services import determinism
from workers.agent import sandbox as sandboxing

from .api_support import job_body
from .factories import NodeFactory, OfferFactory
from .test_api_bundles import RUNTIME, post_file

pytestmark = pytest.mark.django_db
QUOTE = "/api/v1/jobs/quote/"
D = DeterminismCheck.Status

# A task that makes its own data; NOISE is where the noisy one draws from the OS.
TASK = '''
import os
import torch
from workers.training.task import Task


class Small(Task):
    def datasets(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 4, generator=g)
        y = (x.sum(1) > 0).long()
        return (x[:200], y[:200]), (x[200:], y[200:])

    def build_model(self):
        return torch.nn.Linear(4, 2)

    def loss(self, model, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y) * NOISE

    def evaluate(self, model, held_out, device):
        x, y = held_out
        return {"loss": float(torch.nn.functional.cross_entropy(model(x), y))}
'''
SCHEMA = json.dumps({"properties": {"epochs": {"type": "integer"}, "batch_size": {"type": "integer"},
                                    "learning_rate": {"type": "number"}, "seed": {"type": "integer"}}})
PARAMS = {"epochs": 2, "batch_size": 16, "learning_rate": 0.01, "seed": 0}


def upload(api, user, *, noisy: bool) -> CodeBundle:
    noise = "(1 + 1e-3 * int.from_bytes(os.urandom(4), 'little') / 2**32)" if noisy else "1.0"
    response = post_file(api.as_user(user), TASK.replace("NOISE", noise).encode(), "small.py",
                         entry="Small", runtime=RUNTIME, params_schema=SCHEMA)
    assert response.status_code == 201, response.content
    return CodeBundle.objects.get(pk=response.json()["id"])


@pytest.fixture
def offers():
    for _ in range(2):
        OfferFactory(node=NodeFactory(runtime=RUNTIME, gpu_model="cpu", gpu_count=2, gpu_memory_gb=0),
                     accepts_custom_code=True, price_per_gpu_hour="1.00")


def body_for(bundle: CodeBundle, **over) -> dict:
    return job_body(**{"template": "", "bundle": bundle.pk, "dataset": "", "params": PARAMS,
                       "gpu_models": ["cpu"], "nodes": 2, "gpus_per_node": 1, **over})


def quote(api, user, body) -> dict:
    response = api.as_user(user).post(QUOTE, body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_the_first_quote_asks_once_and_later_quotes_show_the_answer(api, alice, healthcare, offers):
    bundle = upload(api, alice, noisy=True)
    first = quote(api, alice, body_for(bundle))
    assert first["verification"] == {"method": "checking", "message": MESSAGES["checking"],
                                     "determinism": None}
    check = DeterminismCheck.objects.get()
    assert (check.bundle, check.world_size, check.params, check.status) == (bundle, 2, PARAMS, D.PENDING)
    quote(api, alice, body_for(bundle))
    assert DeterminismCheck.objects.count() == 1  # asked once
    # Another world size splits the data differently: another check.
    quote(api, alice, body_for(bundle, gpus_per_node=2))
    assert DeterminismCheck.objects.count() == 1 + 1

    DeterminismCheck.objects.filter(pk=check.pk).update(status=D.DONE, deterministic=False, steps=3,
                                                        rel_l2=2.5e-4, seconds=1.5)
    answer = quote(api, alice, body_for(bundle))["verification"]
    assert answer["method"] == "evaluation_only"
    assert answer["message"].startswith("Not deterministic under the runtime's seeding: verified by "
                                        "held-out evaluation only")
    assert answer["determinism"] == {"deterministic": False, "steps": 3, "rel_l2": 2.5e-4, "seconds": 1.5}
    DeterminismCheck.objects.filter(pk=check.pk).update(deterministic=True, rel_l2=0.0)
    assert quote(api, alice, body_for(bundle))["verification"]["method"] == "replay"


def test_a_failed_check_says_so_and_is_asked_again_within_its_runs(api, alice, healthcare, offers):
    bundle = upload(api, alice, noisy=False)
    quote(api, alice, body_for(bundle))
    check = DeterminismCheck.objects.get()
    DeterminismCheck.objects.filter(pk=check.pk).update(status=D.ERROR, runs=1, error="no sandbox")
    assert quote(api, alice, body_for(bundle))["verification"]["method"] == "checking"  # asked again
    check.refresh_from_db()
    assert check.status == D.PENDING
    DeterminismCheck.objects.filter(pk=check.pk).update(status=D.ERROR, runs=determinism.MAX_RUNS)
    answer = quote(api, alice, body_for(bundle))["verification"]
    assert answer["method"] == "unknown" and "checks it again when the work is verified" in answer["message"]


def test_templates_and_diloco_need_no_check(api, alice, healthcare, offers):
    templated = quote(api, alice, job_body(gpu_models=["cpu"]))["verification"]
    assert templated["method"] == "replay" and templated["message"].startswith("Verified by step replay")
    bundle = upload(api, alice, noisy=True)
    diloco = quote(api, alice, body_for(bundle, sync={"mode": "diloco", "inner_steps": 5}))["verification"]
    assert diloco["method"] == "evaluation_only" and diloco["message"].startswith("DiLoCo across nodes")
    assert not DeterminismCheck.objects.exists()


def test_a_submitted_job_asks_too_and_its_api_and_page_say_how_it_is_verified(
        api, client, alice, bob, healthcare, offers, settings):
    settings.ESCROW_ENABLED = True  # the job waits for funding: what the consumer sees before paying
    bundle = upload(api, alice, noisy=True)
    response = api.as_user(alice).post("/api/v1/jobs/", body_for(bundle), format="json")
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["status"] == "submitted"
    assert job["verification"]["method"]["method"] == "checking"
    check = DeterminismCheck.objects.get()

    client.force_login(alice)
    page = client.get(reverse("job_detail", args=[job["id"]])).content.decode()
    assert 'data-testid="verification-method" data-method="checking"' in page
    assert MESSAGES["checking"].replace("'", "&#x27;") in page
    partial_url = reverse("job_verification_method", args=[job["id"]])
    assert f'hx-get="{partial_url}" hx-trigger="every 2s"' in page  # asks again, no reload

    DeterminismCheck.objects.filter(pk=check.pk).update(status=D.DONE, deterministic=False, steps=3,
                                                        rel_l2=1.2e-3, seconds=2.0)
    partial = client.get(partial_url).content.decode()
    assert 'data-method="evaluation_only"' in partial and "hx-get" not in partial
    assert "verified by held-out evaluation only" in partial and "differed by 1.2e-03" in partial
    got = api.as_user(alice).get(f"/api/v1/jobs/{job['id']}/").json()["verification"]["method"]
    assert got["method"] == "evaluation_only" and got["determinism"]["deterministic"] is False
    # Another organization's consumer sees nothing of it.
    client.force_login(bob)
    assert client.get(partial_url).status_code == 404


def test_the_quote_panel_says_checking_asks_again_then_shows_the_answer(api, client, alice, healthcare,
                                                                        offers):
    bundle = upload(api, alice, noisy=True)
    client.force_login(alice)
    form = {"name": "Small", "template": "tabular-classifier", "bundle": str(bundle.pk), "dataset": "none",
            "params": json.dumps(PARAMS), "nodes": "2", "gpus_per_node": "1", "min_gpu_memory_gb": "0",
            "gpu_models": ["cpu"], "regions": "", "compliance": [], "min_reliability": "",
            "max_price_per_gpu_hour": "2.00", "budget": "100", "duration_hours": "1",
            "deadline": (timezone.now() + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M"), "tz_offset": "0"}
    html = client.post(reverse("job_quote"), form).content.decode()
    assert 'data-testid="quote-verification" data-method="checking"' in html, html
    assert 'hx-target="#quote-panel" hx-trigger="load delay:2s"' in html
    DeterminismCheck.objects.update(status=D.DONE, deterministic=False, steps=3, rel_l2=1e-3, seconds=1.0)
    html = client.post(reverse("job_quote"), form).content.decode()
    assert 'data-method="evaluation_only"' in html and "load delay:2s" not in html
    assert "Not deterministic under the runtime&#x27;s seeding: verified by held-out evaluation only" in html


@pytest.mark.parametrize("noisy", [True, False], ids=["noisy", "deterministic"])
def test_the_check_replays_the_task_twice_with_the_verifiers_torch_half(api, alice, healthcare, offers,
                                                                        noisy):
    import workers.verify

    bundle = upload(api, alice, noisy=noisy)
    quote(api, alice, body_for(bundle))
    check = DeterminismCheck.objects.get()
    # In the verifier's sandbox where bubblewrap runs here (as the verify worker does), else in-process.
    torch_half = (workers.verify.check_determinism_sandboxed if sandboxing.available()
                  else workers.verify.check_determinism)
    assert determinism.determinism_run(check_id=check.pk, check=torch_half) == D.DONE
    check.refresh_from_db()
    assert check.deterministic is (not noisy) and check.steps == 3 and check.runs == 1
    assert (check.rel_l2 > 0) if noisy else (check.rel_l2 == 0.0)
    # Answered once: a redelivered task leaves it as it is.
    assert determinism.determinism_run(check_id=check.pk, check=torch_half) == D.DONE
    check.refresh_from_db()
    assert check.runs == 1
    job = Job(bundle=bundle, dataset_ref="", params=PARAMS, nodes=2, gpus_per_node=1, sync={"mode": "ddp"})
    assert job_verification_method(job)["method"] == ("evaluation_only" if noisy else "replay")


def test_quotes_queue_a_few_checks_at_a_time_and_a_submission_always_does(api, alice, healthcare, offers):
    bundle = upload(api, alice, noisy=True)
    for epochs in range(1, determinism.QUOTE_IN_FLIGHT + 2):  # one more than may wait
        said = quote(api, alice, body_for(bundle, params={**PARAMS, "epochs": epochs}))["verification"]
        assert said["method"] == "checking"
    assert DeterminismCheck.objects.count() == determinism.QUOTE_IN_FLIGHT
    last = body_for(bundle, params={**PARAMS, "epochs": determinism.QUOTE_IN_FLIGHT + 1})
    # One answered: the next quote of the one left out queues it.
    DeterminismCheck.objects.filter(pk=DeterminismCheck.objects.first().pk).update(status=D.DONE,
                                                                                  deterministic=True)
    quote(api, alice, last)
    assert DeterminismCheck.objects.filter(params__epochs=determinism.QUOTE_IN_FLIGHT + 1).exists()
    # A submitted job's check is queued however many wait.
    response = api.as_user(alice).post("/api/v1/jobs/", body_for(bundle, params={**PARAMS, "epochs": 99}),
                                       format="json")
    assert response.status_code == 201, response.content
    assert DeterminismCheck.objects.filter(params__epochs=99, status=D.PENDING).exists()
    assert DeterminismCheck.objects.filter(status=D.PENDING).count() == determinism.QUOTE_IN_FLIGHT + 1
