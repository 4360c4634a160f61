"""Budget safety with the escrow off (the budget is Job.budget): the projection, the 80 %
warning, the pause (each node told to checkpoint and stop; the job paused at that step),
the forced stop when the budget is gone, and resuming when the budget is raised. The
escrow-on cases are in tests/payments/test_budget_escrow.py; the real agents in
tests/test_budget_e2e.py."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace import job_states
from marketplace.errors import MarketError
from marketplace.models import Assignment, Job
from marketplace.selectors import metering
from marketplace.selectors.live import cost_so_far, job_brief, job_snapshot
from marketplace.services import agent_ingest, budget, execution
from marketplace.services.budget import BudgetCheck

from .factories import JobFactory
from .payments.support import checkpoint, move, offer_on

S = Job.Status
A = Assignment.Status
URL = "/api/v1/jobs/"


# --- the projection (pure) ---------------------------------------------------------------
def check(limit: str, spent: str, per_hour: str = "36") -> BudgetCheck:
    return BudgetCheck(limit=Decimal(limit), spent=Decimal(spent),
                       rate_per_s=Decimal(per_hour) / Decimal(3600))


@pytest.mark.parametrize(("limit", "spent", "per_hour", "expected"), [
    ("10", "0", "36", "ok"),
    ("10", "7.99", "36", "ok"),
    ("10", "8", "36", "warn"),        # 80 %, and 2 tUSD lasts 200 s at 0.01 tUSD/s
    ("10", "9.85", "36", "pause"),    # 0.15 tUSD left = 15 s at 0.01 tUSD/s: the lead time
    ("10", "9.84", "36", "warn"),     # 16 s left
    ("10", "9.5", "360", "pause"),    # faster placement: the same 0.5 tUSD lasts only 5 s
    ("10", "10", "36", "stop"),
    ("10", "12", "36", "stop"),       # metered past the limit (settlement caps the charge)
    ("10", "9.99", "0", "warn"),      # nothing runs: nothing more is spent, no pause
])
def test_the_verdict_projects_the_spend_rate_over_the_lead_time(limit, spent, per_hour, expected):
    assert check(limit, spent, per_hour).verdict(lead_s=15) == expected


def test_seconds_left_at_the_current_rate():
    assert check("10", "9", "36").seconds_left == pytest.approx(100)
    assert check("10", "9", "0").seconds_left is None
    assert check("10", "11").remaining == 0 and check("10", "11").seconds_left == 0


def test_the_lead_time_grows_for_slow_steps(settings):
    settings.BUDGET_PAUSE_LEAD_S, settings.BUDGET_CHECK_INTERVAL_S = 15, 2
    fast = Job(params={"batch_size": 64}, nodes=1, gpus_per_node=2, samples_per_sec=12_800.0)
    slow = Job(params={"batch_size": 64}, nodes=2, gpus_per_node=4, samples_per_sec=256.0)  # 2 s a step
    unknown = Job(params={}, nodes=1, gpus_per_node=1, samples_per_sec=None)
    assert budget.lead_seconds(fast) == 15  # 10 ms a step
    assert budget.lead_seconds(slow) == pytest.approx(2 + 2 * 10 * 2.0)
    assert budget.lead_seconds(unknown) == 15
    # 30 s of budget left: enough warning for the fast job, not for the slow one.
    left = check("10", "9.7", "36")
    assert left.verdict(lead_s=budget.lead_seconds(fast)) == "warn"
    assert left.verdict(lead_s=budget.lead_seconds(slow)) == "pause"


# --- jobs ---------------------------------------------------------------------------------
def running_job(owner, node, *, budget: str, price: str, minutes: float, gpus: int = 1, **fields) -> Job:
    """A running job whose only node has been training for `minutes` at `price` per GPU-hour."""
    job = JobFactory(owner=owner, budget=Decimal(budget), status=S.SUBMITTED, gpus_per_node=gpus,
                     max_price_per_gpu_hour=Decimal(price), **fields)
    move(job, S.FUNDED, S.MATCHING, S.RUNNING)
    Job.objects.filter(pk=job.pk).update(attempt=1)
    Assignment.objects.create(
        job=job, node=node, offer=offer_on(node), attempt=1, node_rank=0, gpus=gpus,
        price_per_gpu_hour=Decimal(price), status=A.RUNNING,
        started_at=timezone.now() - timedelta(minutes=minutes))
    job.refresh_from_db()
    return job


def test_the_live_spend_is_the_settlement_metering(healthcare, carol_node):
    job = running_job(healthcare, carol_node, budget="100", price="6", minutes=30)
    lost = Assignment.objects.create(
        job=job, node=carol_node, offer=offer_on(carol_node), attempt=0, node_rank=0, gpus=1,
        price_per_gpu_hour=Decimal("6"), status=A.LOST, started_at=timezone.now() - timedelta(hours=2),
        finished_at=timezone.now() - timedelta(hours=1))
    checkpoint(lost, after_minutes=20)  # the lost node's last 40 minutes are not charged
    now = timezone.now()
    spent = cost_so_far(job, now=now)
    assert spent == pytest.approx(Decimal("2") + Decimal("3"), abs=Decimal("0.01"))  # 20 min + 30 min at 6/h
    # Once the running part stops, the statement that settles it says the same.
    job.assignments.filter(status=A.RUNNING).update(status=A.CANCELLED, finished_at=now)
    assert metering.job_statement(job)[1] == spent


def test_work_that_failed_verification_is_not_in_the_spend(healthcare, carol_node):
    from marketplace.models import Dispute

    job = running_job(healthcare, carol_node, budget="100", price="6", minutes=30)
    cheat = Assignment.objects.create(
        job=job, node=carol_node, offer=offer_on(carol_node), attempt=0, node_rank=0, gpus=1,
        price_per_gpu_hour=Decimal("6"), status=A.SUCCEEDED,
        started_at=timezone.now() - timedelta(hours=2), finished_at=timezone.now() - timedelta(hours=1))
    before = cost_so_far(job)
    Dispute.objects.create(job=job, assignment=cheat, provider=carol_node.provider,
                           reason=Dispute.Reason.REPLAY_MISMATCH)
    now = timezone.now()
    assert before - cost_so_far(job, now=now) == pytest.approx(Decimal("6"), abs=Decimal("0.01"))
    job.assignments.filter(status=A.RUNNING).update(status=A.CANCELLED, finished_at=now)
    assert metering.job_statement(job)[1] == cost_so_far(job, now=now)


def test_the_consumer_is_warned_once_at_80_percent(healthcare, carol_node):
    job = running_job(healthcare, carol_node, budget="10", price="10", minutes=50)  # 8.33 tUSD
    assert budget.budget_watch() == {"warned": 1, "pausing": 0, "stopped": 0, "expired": 0}
    assert budget.budget_watch()["warned"] == 0
    (note,) = job.events.filter(reason="budget_warning")
    assert "80 % of the budget is spent: 8.3" in note.message
    snapshot = job_snapshot(Job.objects.get(pk=job.pk))
    assert snapshot["spend"]["warning"] is True and snapshot["spend"]["limit"] == "10.000000"
    assert job_brief(job, snapshot)["budget_warning"] is True
    assert Job.objects.get(pk=job.pk).status == S.RUNNING


def test_no_warning_below_80_percent(healthcare, carol_node):
    job = running_job(healthcare, carol_node, budget="10", price="10", minutes=40)  # 6.67 tUSD
    assert budget.budget_watch() == {"warned": 0, "pausing": 0, "stopped": 0, "expired": 0}
    assert not job.events.filter(reason="budget_warning").exists()
    assert job_snapshot(job)["spend"]["warning"] is False


def finished(a: Assignment, *, seq: int, step: int) -> dict:
    return {"type": "assignment.finished", "assignment": a.pk, "seq": seq, "status": "paused",
            "step": step, "total_steps": 500}


def test_at_the_budget_each_node_checkpoints_and_the_job_pauses_at_that_step(healthcare, carol_node):
    job = running_job(healthcare, carol_node, budget="10", price="36", minutes=16.6)  # 9.96 tUSD, 0.01/s
    (a,) = job.assignments.all()
    assert budget.budget_watch() == {"warned": 1, "pausing": 1, "stopped": 0, "expired": 0}
    job.refresh_from_db()
    assert job.pause_requested_at is not None and job.status == S.RUNNING
    assert job.events.filter(reason="budget_pausing").count() == 1
    # The agent is told on its next heartbeat too (the first push may be lost).
    replies = execution.agent_heartbeat(node=carol_node, running=[a.pk])
    assert [m["type"] for m in replies] == ["assignment.pause"] and replies[0]["assignment"] == a.pk
    assert budget.budget_watch()["pausing"] == 0  # asked once
    # The node checkpointed at step 120 and stopped.
    checkpoint(a, after_minutes=16, step=120)
    assert agent_ingest.agent_data(node=carol_node, message=finished(a, seq=1, step=120)) == "applied"
    job.refresh_from_db()
    a.refresh_from_db()
    assert (job.status, job.current_step, a.status) == (S.PAUSED, 120, A.PAUSED)
    paused = job.events.get(to_status=S.PAUSED)
    assert paused.reason == "budget_paused" and paused.data == {"step": 120}
    assert "Paused at step 120" in paused.message and "Raise the budget" in paused.message
    # A resent finish (the agent's outbox after a reconnect) changes nothing.
    assert agent_ingest.agent_data(node=carol_node, message=finished(a, seq=1, step=120)) == "duplicate"
    assert job.events.filter(to_status=S.PAUSED).count() == 1


def test_a_node_that_does_not_pause_within_the_grace_time_is_stopped(healthcare, carol_node, settings):
    settings.BUDGET_PAUSE_GRACE_S = 60
    job = running_job(healthcare, carol_node, budget="10", price="36", minutes=16.8)  # 10.08 tUSD
    (a,) = job.assignments.all()
    checkpoint(a, after_minutes=15, step=90)
    assert budget.budget_watch()["pausing"] == 1
    # Over budget, but the node may still be starting up: it gets time to checkpoint.
    assert budget.budget_watch(now=timezone.now() + timedelta(seconds=59))["stopped"] == 0
    assert budget.budget_watch(now=timezone.now() + timedelta(seconds=61))["stopped"] == 1
    job.refresh_from_db()
    a.refresh_from_db()
    assert (job.status, job.current_step) == (S.PAUSED, 90)  # its last committed checkpoint
    assert a.status == A.CANCELLED and "budget" in a.detail
    assert "the nodes were stopped" in job.events.get(to_status=S.PAUSED).message


def test_a_diloco_job_is_stopped_at_once_and_pauses_at_its_last_global_checkpoint(healthcare, carol_node):
    job = running_job(healthcare, carol_node, budget="10", price="36", minutes=16.6, nodes=2,
                      sync={"mode": "diloco", "inner_steps": 20})
    checkpoint(job.assignments.get(), after_minutes=10, step=60)
    assert budget.budget_watch()["pausing"] == 1
    job.refresh_from_db()
    assert (job.status, job.current_step) == (S.PAUSED, 60)


def paused_job(owner, node, *, budget_: str = "10") -> Job:
    job = running_job(owner, node, budget=budget_, price="36", minutes=16.8)
    checkpoint(job.assignments.get(), after_minutes=15, step=90)
    budget.budget_watch()
    budget.budget_watch(now=timezone.now() + timedelta(minutes=5))  # the node never paused
    job.refresh_from_db()
    assert job.status == S.PAUSED
    return job


def test_raising_the_budget_resumes_a_paused_job_from_its_checkpoint(healthcare, carol_node, alice):
    job = paused_job(healthcare, carol_node)
    budget.job_budget_raise(job=job, budget=Decimal("20"), actor=alice)
    job.refresh_from_db()
    assert job.status == S.MATCHING and job.pause_requested_at is None and job.budget == Decimal("20")
    resumed = job.events.get(reason="budget_topped_up")
    assert resumed.from_status == S.PAUSED and "resuming from step 90" in resumed.message
    # A retry sets the same total: nothing changes, nothing is logged twice.
    budget.job_budget_raise(job=job, budget=Decimal("20"), actor=alice)
    assert job.events.filter(reason__in=("budget_raised", "budget_topped_up")).count() == 2


def test_a_raise_too_small_to_run_leaves_the_job_paused_and_says_so(healthcare, carol_node, alice):
    job = paused_job(healthcare, carol_node)
    # 0.12 tUSD more than spent: 12 s at up to 36 tUSD/h, less than twice the 15 s lead time.
    budget.job_budget_raise(job=job, budget=Decimal("10.20"), actor=alice)
    job.refresh_from_db()
    assert job.status == S.PAUSED
    assert job.events.filter(reason="budget_still_short").exists()


def test_the_budget_cannot_be_lowered_or_changed_once_final(healthcare, carol_node, alice):
    job = paused_job(healthcare, carol_node)
    with pytest.raises(MarketError) as err:
        budget.job_budget_raise(job=job, budget=Decimal("5"), actor=alice)
    assert err.value.code == "budget_lowered"
    done = JobFactory(owner=healthcare, status=S.COMPLETED)
    with pytest.raises(MarketError):
        budget.job_budget_raise(job=done, budget=Decimal("500"), actor=alice)


def test_the_budget_api_is_the_owners_alone(api, healthcare, carol_node, alice, bob):
    job = paused_job(healthcare, carol_node)
    for user in (bob,):  # another tenant: as if the job did not exist
        response = api.as_user(user).post(f"{URL}{job.pk}/budget/", {"budget": "50"}, format="json")
        assert response.status_code == 404
    response = api.as_user(None).post(f"{URL}{job.pk}/budget/", {"budget": "50"}, format="json")
    assert response.status_code == 401
    response = api.as_user(alice).post(f"{URL}{job.pk}/budget/", {"budget": "abc"}, format="json")
    assert response.status_code == 400 and "budget" in str(response.json())
    response = api.as_user(alice).post(f"{URL}{job.pk}/budget/", {"budget": "1"}, format="json")
    assert response.status_code == 400 and "raised" in str(response.json())
    job.refresh_from_db()
    assert job.budget == Decimal("10") and job.status == S.PAUSED
    response = api.as_user(alice).post(f"{URL}{job.pk}/budget/", {"budget": "50"}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "matching" and body["budget"] == "50.000000"
    assert body["spend"]["limit"] == "50.000000" and body["spend"]["warning"] is False


def test_a_paused_job_can_be_cancelled_once_by_its_owner_only(api, healthcare, carol_node, alice, bob):
    job = paused_job(healthcare, carol_node)
    assert api.as_user(bob).post(f"{URL}{job.pk}/cancel/").status_code == 404
    first = api.as_user(alice).post(f"{URL}{job.pk}/cancel/")
    again = api.as_user(alice).post(f"{URL}{job.pk}/cancel/")
    assert first.status_code == again.status_code == 200 and again.json()["status"] == "cancelled"
    assert job.events.filter(to_status=S.CANCELLED).count() == 1


# --- pages ----------------------------------------------------------------------------------
def test_the_job_page_and_my_jobs_show_the_warning(client, healthcare, carol_node, alice):
    quiet = running_job(healthcare, carol_node, budget="100", price="10", minutes=10)
    near = running_job(healthcare, carol_node, budget="10", price="10", minutes=50)
    client.force_login(alice)
    page = client.get(f"/jobs/{near.pk}/").content.decode()
    assert 'data-testid="budget-warning" role="status">' in page and "% spent" in page
    calm = client.get(f"/jobs/{quiet.pk}/").content.decode()
    assert 'data-testid="budget-warning" role="status" hidden>' in calm
    listing = client.get("/jobs/").content.decode()
    assert listing.count('data-testid="budget-warning">80 % of budget') == 1  # the other one is hidden


def test_raising_the_budget_from_the_page(client, healthcare, carol_node, alice, bob):
    job = paused_job(healthcare, carol_node)
    client.force_login(bob)
    assert client.post(f"/jobs/{job.pk}/budget/", {"budget": "50"}).status_code == 404
    client.force_login(alice)
    response = client.post(f"/jobs/{job.pk}/budget/", {"budget": "lots"}, follow=True)
    assert "must be an amount" in response.content.decode()
    response = client.post(f"/jobs/{job.pk}/budget/", {"budget": "50"}, follow=True)
    assert "Budget raised to 50.00 tUSD." in response.content.decode()
    job.refresh_from_db()
    assert job.status == S.MATCHING and job.budget == Decimal("50")


def test_placements_that_paused_at_the_budget_do_not_count_as_failed_attempts(healthcare, carol_node,
                                                                             settings):
    settings.JOB_MAX_ATTEMPTS = 3
    job = paused_job(healthcare, carol_node)  # placement 1 paused
    Job.objects.filter(pk=job.pk).update(attempt=3)  # and placement 2 too; this is the third
    job_states.note(job_id=job.pk, reason="budget_paused", message="an earlier pause")
    move(job, S.MATCHING, S.RUNNING)
    job.refresh_from_db()
    a = Assignment.objects.create(
        job=job, node=carol_node, offer=offer_on(carol_node), attempt=3, node_rank=0, gpus=1,
        price_per_gpu_hour=Decimal("1"), status=A.RUNNING, started_at=timezone.now())
    assert execution.node_lost(node_id=carol_node.pk) == 1
    job.refresh_from_db()
    a.refresh_from_db()
    assert a.status == A.LOST and job.status == S.INTERRUPTED  # one failed placement of three
