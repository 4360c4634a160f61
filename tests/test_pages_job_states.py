"""Job pages say what happened (issue 18): cancelled, failed, paused and interrupted jobs read
as such with what was paid and refunded; money has one display rule; ETA and throughput only
while training; *My jobs* filters by status and searches; the budget field takes round values."""

import re
import secrets
from decimal import Decimal

import pytest
from django.urls import reverse

from marketplace.models import Escrow, Job, JobEvent, Settlement

from .factories import JobFactory
from .test_pages_jobs import form_data

pytestmark = pytest.mark.django_db
S = Job.Status


def _trail(job: Job, *statuses: str) -> None:
    previous = ""
    for status in statuses:
        JobEvent.objects.create(job=job, from_status=previous, to_status=status, reason="test",
                                message=f"to {status}")
        previous = status


def _escrow(job: Job, status: str, amount: str = "2") -> Escrow:
    return Escrow.objects.create(job=job, key="0x" + secrets.token_hex(32), status=status,
                                 amount=Decimal(amount))


@pytest.fixture
def escrow_on(settings):
    settings.ESCROW_ENABLED = True


@pytest.fixture
def cancelled_settled(healthcare, escrow_on):
    """A 2 tUSD job cancelled after a little work, then settled: 0.000625 paid, 1.999375 back."""
    job = JobFactory(owner=healthcare, name="sepsis risk", status=S.SETTLED, budget=Decimal("2"),
                     current_step=2600, total_steps=10000, samples_per_sec=5000.0)
    _trail(job, S.SUBMITTED, S.FUNDED, S.MATCHING, S.RUNNING, S.CANCELLED, S.SETTLED)
    _escrow(job, Escrow.Status.SETTLED)
    Settlement.objects.create(job=job, status=Settlement.Status.SETTLED, charged=Decimal("0.000625"),
                              fee=Decimal("0.000031"), refunded=Decimal("1.999375"))
    return job


def _text(html: str, testid: str) -> str:
    """The text of the element with this test id (one that holds no element of its own tag)."""
    match = re.search(rf'<(\w+)[^>]*data-testid="{testid}"[^>]*>(.*?)</\1>', html, re.S)
    assert match, f"{testid} not on the page"
    return " ".join(re.sub(r"<[^>]+>", "", match.group(2)).split())


def test_a_cancelled_settled_job_reads_cancelled_with_its_refund(client, alice, cancelled_settled):
    client.force_login(alice)
    html = client.get(reverse("job_detail", args=[cancelled_settled.pk])).content.decode()
    assert _text(html, "job-status") == "cancelled"
    summary = _text(html, "job-summary")
    assert summary == "Cancelled; 0.000625 tUSD paid for the work done, 1.999375 tUSD refunded."
    assert "Settled Settled" not in html
    # The escrow card no longer says the deposit is held.
    escrow = _text(html, "escrow-summary")
    assert "held" not in escrow
    assert "0.000625 tUSD paid for the work done, 1.999375 tUSD back to the consumer" in escrow
    assert _text(html, "cost-so-far") == "0.000625" and _text(html, "refunded-stat") == "1.999375"
    # Not training: neither a throughput nor an ETA.
    assert re.search(r'data-testid="throughput"[^>]*hidden', html)
    assert not re.search(r"about \d+ (s|min|h) left", html)


def test_my_jobs_shows_the_ending_and_the_settled_charge(client, alice, cancelled_settled):
    client.force_login(alice)
    html = client.get(reverse("jobs")).content.decode()
    row = html[html.index(f'data-job-id="{cancelled_settled.pk}"'):]
    row = row[:row.index("</tr>")]
    assert '<span class="chip chip-neutral">cancelled</span>' in row
    assert "0.000625 paid · 1.999375 refunded" in row
    assert '<span class="js-cost">0.000625</span>' in row  # not "0.00"


def test_failed_then_refunded_job_reads_failed(client, alice, healthcare, escrow_on):
    job = JobFactory(owner=healthcare, status=S.REFUNDED, budget=Decimal("2"))
    _trail(job, S.SUBMITTED, S.FUNDED, S.MATCHING, S.FAILED, S.REFUNDED)
    _escrow(job, Escrow.Status.REFUNDED)
    client.force_login(alice)
    html = client.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert _text(html, "job-status") == "failed"
    assert _text(html, "job-summary") == "Failed; nothing paid, 2.00 tUSD refunded."
    assert "was deposited and refunded" in _text(html, "escrow-summary")


@pytest.mark.parametrize("status, display", [(S.PAUSED, "Paused: budget spent"),
                                             (S.INTERRUPTED, "Interrupted, resuming")])
def test_paused_and_interrupted_jobs_say_so_without_eta(client, alice, healthcare, status, display):
    job = JobFactory(owner=healthcare, status=status, current_step=50, total_steps=100,
                     samples_per_sec=1234.0)
    client.force_login(alice)
    html = client.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert _text(html, "job-status") == status and _text(html, "job-summary") == display
    assert re.search(r'data-testid="throughput"[^>]*hidden', html)


def test_a_running_job_shows_its_throughput(client, alice, healthcare):
    job = JobFactory(owner=healthcare, status=S.RUNNING, current_step=50, total_steps=100,
                     samples_per_sec=1234.0)
    client.force_login(alice)
    html = client.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert re.search(r'data-testid="throughput"(?![^>]*hidden)[^>]*>', html)


# --- My jobs: status filter and search ------------------------------------------------------
@pytest.fixture
def many(healthcare, energy, cancelled_settled):
    running = JobFactory(owner=healthcare, name="ecg arrhythmia", status=S.RUNNING)
    paused = JobFactory(owner=healthcare, name="load forecast", template="load-forecast",
                        status=S.PAUSED)
    failed = JobFactory(owner=healthcare, name="ecg retry", status=S.FAILED)
    completed = JobFactory(owner=healthcare, name="triage", status=S.SETTLED)
    _trail(completed, S.RUNNING, S.VERIFYING, S.COMPLETED, S.SETTLED)
    JobFactory(owner=energy, name="ecg elsewhere", status=S.RUNNING)  # bob's: never listed
    return {"running": running, "paused": paused, "failed": failed, "completed": completed,
            "cancelled": cancelled_settled}


def _listed(client, **params) -> set[int]:
    response = client.get(reverse("jobs"), params)
    assert response.status_code == 200
    return {job.pk for job in response.context["jobs"]}


@pytest.mark.parametrize("status, expected", [
    ("", {"running", "paused", "failed", "completed", "cancelled"}),
    ("active", {"running"}), ("paused", {"paused"}), ("failed", {"failed"}),
    ("cancelled", {"cancelled"}), ("completed", {"completed"}), ("interrupted", set()),
    ("no-such-status", {"running", "paused", "failed", "completed", "cancelled"}),
])
def test_my_jobs_filters_by_status(client, alice, many, status, expected):
    client.force_login(alice)
    assert _listed(client, status=status) == {many[k].pk for k in expected}


def test_my_jobs_searches_names_templates_and_ids(client, alice, many):
    client.force_login(alice)
    assert _listed(client, q="ECG") == {many["running"].pk, many["failed"].pk}
    assert _listed(client, q="load-forecast") == {many["paused"].pk}
    assert _listed(client, q=f"#{many['completed'].pk}") == {many["completed"].pk}
    assert _listed(client, q="ecg", status="failed") == {many["failed"].pk}
    html = client.get(reverse("jobs"), {"q": "nothing like it"}).content.decode()
    assert 'data-testid="no-match"' in html and "nothing like it" in html
    assert 'value="nothing like it"' in html  # the search box keeps what was typed


# --- the budget field -------------------------------------------------------------------------
def test_raise_budget_field_takes_any_amount(client, alice, healthcare):
    job = JobFactory(owner=healthcare, status=S.PAUSED, budget=Decimal("2"))
    client.force_login(alice)
    html = client.get(reverse("job_detail", args=[job.pk])).content.decode()
    field = re.search(r'<input id="new-budget"[^>]*>', html).group(0)
    assert 'step="any"' in field and 'min="2.000000"' in field
    response = client.post(reverse("job_budget", args=[job.pk]), {"budget": "3"}, follow=True)
    assert "Budget raised to 3.00 tUSD." in response.content.decode()
    job.refresh_from_db()
    assert job.budget == Decimal("3")


@pytest.mark.parametrize("value, error", [
    ("2.5", "The budget can only be raised: enter 3.00 tUSD or more."),
    ("3.1234567", "at most 6 decimal places"),
    ("lots", "The budget must be an amount in tUSD"),
    ("NaN", "The budget must be an amount in tUSD"),
])
def test_raise_budget_refusals_are_shown_at_the_field(client, alice, healthcare, value, error):
    job = JobFactory(owner=healthcare, status=S.PAUSED, budget=Decimal("3"))
    client.force_login(alice)
    html = client.post(reverse("job_budget", args=[job.pk]), {"budget": value}, follow=True).content.decode()
    assert error in _text(html, "budget-error")
    assert 'aria-invalid="true"' in html
    job.refresh_from_db()
    assert job.budget == Decimal("3")
    # Shown once: a reload no longer carries it.
    again = client.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert 'data-testid="budget-error"' not in again


# --- one money rule in the quote and the timeline ---------------------------------------------
def test_quote_over_a_tiny_budget_shows_its_real_amounts(client, alice, carol_offer):
    client.force_login(alice)
    html = client.post(reverse("job_quote"), form_data(budget="0.0005", gpu_models=[], regions="",
                                                       min_gpu_memory_gb="0")).content.decode()
    assert "exceeds your budget of 0.0005 tUSD" in html
    assert "budget of 0.00 " not in html
