"""The job page's live layer, server side: the page ships the vendored chart library and the
socket's address, renders the initial state (progress, ETA, cost so far, timeline) without
JavaScript, and no longer polls. The browser behaviour is tested in the browser tests."""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.urls import reverse
from django.utils import timezone

from marketplace.models import Assignment, Job, JobEvent, MetricPoint

from .factories import JobFactory, NodeFactory, OfferFactory

pytestmark = pytest.mark.django_db

CHART_JS = "vendor/chartjs/chart.umd.min.js"


def running_job(owner, *, seconds_between_points: float = 10, current_step: int = 40):
    """A running job on one 2-GPU machine at 2.5 tUSD/GPU-h that ran for exactly one hour."""
    job = JobFactory(owner=owner, status=Job.Status.RUNNING, total_steps=100,
                     current_step=current_step, last_loss=0.25, samples_per_sec=1234.0)
    node = NodeFactory(name="fin-h100", gpu_model="H100 80GB")
    started = timezone.now() - timedelta(hours=2)
    a = Assignment.objects.create(job=job, node=node, offer=OfferFactory(node=node), attempt=1,
                                  node_rank=0, gpus=2, price_per_gpu_hour=Decimal("2.5"),
                                  status="succeeded", started_at=started,
                                  finished_at=started + timedelta(hours=1))
    now = timezone.now()
    for i, step in enumerate((current_step - 20, current_step)):
        MetricPoint.objects.create(job=job, assignment=a, seq=i + 1, step=step, total_steps=100,
                                   loss=0.3, samples_per_sec=1234.0,
                                   at=now + timedelta(seconds=seconds_between_points * i))
    job.metric_seq = 2
    job.save(update_fields=["metric_seq"])
    return job


def page(client, user, job) -> str:
    client.force_login(user)
    response = client.get(reverse("job_detail", args=[job.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_page_ships_the_chart_library_and_the_socket_address(client, alice, healthcare):
    job = running_job(healthcare)
    html = page(client, alice, job)
    assert f'src="{settings.STATIC_URL}{CHART_JS}"' in html
    assert f'src="{settings.STATIC_URL}js/job_live.js"' in html
    assert html.index(CHART_JS) < html.index("js/job_live.js")  # Chart is defined first
    assert f'data-job-id="{job.pk}"' in html
    assert f'data-ws-path="/ws/jobs/{job.pk}/"' in html
    assert f'data-status="{job.status}"' in html
    assert 'data-live="chart"' in html and 'data-live="logs"' in html
    assert 'data-live="indicator"' in html  # shown by the script once it connects
    assert f'data-progress-url="{reverse("job_progress", args=[job.pk])}"' in html
    # No CDN, and no more polling: the WebSocket replaced the 3-second htmx trigger.
    assert "cdn.jsdelivr" not in html and "unpkg.com" not in html
    assert "hx-trigger=\"every" not in html  # the header balance loads once (hx-trigger="load")


def test_page_renders_progress_eta_throughput_and_cost_without_javascript(client, alice, healthcare):
    job = running_job(healthcare, seconds_between_points=40)  # 20 steps in 40 s, 60 to go
    html = page(client, alice, job)
    assert "Step 40 of 100" in html and "(40.0 %)" in html and "width:40.0%" in html
    assert "loss 0.2500" in html
    assert "about 2 min left" in html
    assert 'data-live="throughput">1,234<' in html
    # 2 GPUs × 1 h × 2.5 tUSD/GPU-h at the locked price.
    assert 'data-testid="cost-so-far">5.00<' in html


@pytest.mark.parametrize(("seconds", "expected"), [
    (10, "about 30 s left"),      # 20 steps in 10 s, 60 to go: 30 s
    (600, "about 30 min left"),   # 20 steps in 600 s: 1800 s
    (4800, "about 4 h left"),     # 20 steps in 4800 s: 14400 s
])
def test_eta_is_written_in_the_unit_people_read(client, alice, healthcare, seconds, expected):
    html = page(client, alice, running_job(healthcare, seconds_between_points=seconds))
    assert expected in html


def test_finished_training_shows_no_eta(client, alice, healthcare):
    html = page(client, alice, running_job(healthcare, current_step=100))
    assert "Step 100 of 100" in html and " left" not in html.split('data-live="progress-text"')[1][:300]


def test_job_without_progress_has_an_empty_chart_and_zero_cost(client, alice, healthcare):
    job = JobFactory(owner=healthcare, status=Job.Status.MATCHING)
    html = page(client, alice, job)
    assert "Looking for machines" in html
    assert 'data-live="chart-empty"' in html and "loss curve appears here" in html
    assert 'data-testid="cost-so-far">0.00<' in html
    assert "No log lines yet." in html


def test_timeline_items_carry_what_the_script_dedups_by(client, alice, healthcare):
    job = JobFactory(owner=healthcare, status=Job.Status.FUNDED)
    event = JobEvent.objects.create(job=job, from_status="submitted", to_status="funded",
                                    reason="escrow_funded", message="Escrow funded.")
    html = page(client, alice, job)
    assert f'data-at="{event.created_at.isoformat()}"' in html
    assert 'data-reason="escrow_funded"' in html and 'data-to="funded"' in html


def test_progress_partial_still_serves_reloads_without_javascript(client, alice, healthcare):
    job = running_job(healthcare)
    client.force_login(alice)
    response = client.get(reverse("job_progress", args=[job.pk]), HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="job-progress"')
    assert "Step 40 of 100" in html and 'data-testid="cost-so-far">5.00<' in html
    assert 'hx-trigger="every' not in html


def test_other_organizations_cannot_see_the_page(client, bob, healthcare):
    job = running_job(healthcare)
    client.force_login(bob)
    assert client.get(reverse("job_detail", args=[job.pk])).status_code == 404


def test_vendored_chart_library_is_present_and_collectable():
    path = finders.find(CHART_JS)
    assert path, "static/vendor/chartjs/chart.umd.min.js is missing"
    text = Path(path).read_text()
    assert "Chart.js v4." in text[:200]
    # ManifestStaticFilesStorage would fail collectstatic on a source map that is not shipped.
    assert "sourceMappingURL" not in text
    assert finders.find("vendor/chartjs/LICENSE.md")
    assert finders.find("js/job_live.js")


def test_live_script_speaks_the_resync_protocol():
    text = Path(finders.find("js/job_live.js")).read_text()
    for needle in ('type: "resync"', "after_seq", "after_log_seq", '"history"', '"metrics"',
                   '"logs"', '"job"', "BACKOFF_MAX = 15000", "BACKOFF_MIN = 1000"):
        assert needle in text, needle
