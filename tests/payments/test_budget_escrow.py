"""Budget safety and cancellation with the escrow on (the in-process chain): the budget is
what the escrow holds; a paused job is topped up from the custodial wallet once however
often that is retried, and resumes when the chain says so; a cancelled paused or
interrupted job is settled once for the work done and the rest is refunded."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace.chain import indexer
from marketplace.models import Assignment, ChainTransaction, Job, Settlement
from marketplace.selectors import metering
from marketplace.services import agent_ingest, budget, funding, payments
from marketplace.services.jobs import job_cancel

from .support import assignment, checkpoint, committed, funded_job, move, offer_on, units

pytestmark = pytest.mark.django_db
S = Job.Status
A = Assignment.Status
SETTLED = 2  # JobEscrow.State


def running(job: Job, node, *, price: str, minutes: float) -> Assignment:
    """The job's node has trained for `minutes` at `price` tUSD per GPU-hour."""
    move(job, S.MATCHING, S.RUNNING)
    Job.objects.filter(pk=job.pk).update(attempt=1, max_price_per_gpu_hour=Decimal(price))
    return Assignment.objects.create(
        job=job, node=node, offer=offer_on(node), attempt=1, node_rank=0, gpus=1,
        price_per_gpu_hour=Decimal(price), status=A.RUNNING,
        started_at=timezone.now() - timedelta(minutes=minutes))


def paused(owner, node) -> tuple[Job, Assignment]:
    """Funded with 10 tUSD, paused by its node at step 120 with 9.96 tUSD spent."""
    job = funded_job(owner, budget="10")
    a = running(job, node, price="36", minutes=16.6)
    assert budget.budget_watch()["pausing"] == 1
    checkpoint(a, after_minutes=16.5, step=120)
    agent_ingest.agent_data(node=node, message={"type": "assignment.finished", "assignment": a.pk,
                                             "seq": 1, "status": "paused", "step": 120})
    job.refresh_from_db()
    assert job.status == S.PAUSED and job.current_step == 120
    return job, a


def test_the_budget_is_what_the_escrow_holds(wallets, healthcare, carol_node):
    job = funded_job(healthcare, budget="10")
    running(job, carol_node, price="10", minutes=50)  # 8.33 of 10
    Job.objects.filter(pk=job.pk).update(budget=Decimal("100"))  # a budget not yet in the escrow
    assert budget.budget_watch()["warned"] == 1
    assert "of 10.00 tUSD" in job.events.get(reason="budget_warning").message


def test_a_top_up_is_sent_once_and_resumes_the_job_when_the_chain_says_so(
        wallets, api, healthcare, alice, carol_node):
    job, _ = paused(healthcare, carol_node)
    wallet = healthcare.wallets.get().address
    before = wallets.balance(wallet)
    budget.job_budget_raise(job=job, budget=Decimal("25"), actor=alice)
    job.refresh_from_db()
    assert job.status == S.PAUSED  # the escrow still holds 10
    assert "top up the escrow" in job.events.get(reason="budget_raised").message
    calls = api.as_user(alice).get(f"/api/v1/jobs/{job.pk}/fund-calls/").json()
    assert calls["kind"] == "top_up" and calls["amount"] == "15.000000"

    for _ in range(3):  # a retried request (a double click, a client timeout) sends nothing more
        with committed():
            funding.job_fund(job=job, actor=alice)
    (tx,) = ChainTransaction.objects.filter(purpose="top_up")
    assert job.events.filter(reason="top_up_sent").count() == 1

    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert job.escrow.amount == Decimal("25") and job.status == S.MATCHING
    assert job.events.get(reason="budget_topped_up").from_status == S.PAUSED
    assert indexer.index_events() == 0
    with committed():
        funding.job_fund(job=job, actor=alice)  # covered now: nothing to send
    assert ChainTransaction.objects.filter(purpose="top_up").count() == 1
    assert wallets.balance(wallet) == before - units("15")
    assert wallets.escrow_of(job.escrow.key)[1] == units("25")
    # It resumes from the checkpoint it paused at.
    from marketplace.services import placement

    (resumed,) = placement.job_place(job_id=job.pk)
    assert resumed.resume_step == 120 and resumed.attempt == 2


def test_another_tenant_cannot_top_up_raise_or_cancel(wallets, api, healthcare, bob, carol, carol_node):
    job, _ = paused(healthcare, carol_node)
    for user in (bob, carol):  # another consumer; the provider running it
        client = api.as_user(user)
        assert client.post(f"/api/v1/jobs/{job.pk}/fund/", {}, format="json").status_code in (403, 404)
        assert client.get(f"/api/v1/jobs/{job.pk}/fund-calls/").status_code in (403, 404)
        raised = client.post(f"/api/v1/jobs/{job.pk}/budget/", {"budget": "99"}, format="json")
        assert raised.status_code in (403, 404)
        assert client.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 404
    job.refresh_from_db()
    assert (job.status, job.budget) == (S.PAUSED, Decimal("10"))
    assert not ChainTransaction.objects.filter(purpose="top_up").exists()


def settle(job: Job) -> Settlement:
    assert payments.settlements_prepare() == 1
    with committed():
        payments.settlement_batch_send()
    indexer.index_events()
    return Settlement.objects.get(job=job)


def test_a_paused_job_cancelled_twice_is_settled_once_for_the_work_done(
        wallets, api, healthcare, alice, carol_node):
    job, a = paused(healthcare, carol_node)
    a.refresh_from_db()
    work = metering.job_statement(job)[1]
    assert Decimal("9.9") < work < Decimal("10")
    client = api.as_user(alice)
    assert client.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 200
    assert client.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 200  # a retry
    s = settle(job)
    assert (s.charged, s.refunded) == (work, Decimal("10") - work)
    job.refresh_from_db()
    assert job.status == S.SETTLED
    again = client.post(f"/api/v1/jobs/{job.pk}/cancel/")  # long after: still one cancellation
    assert again.status_code == 200 and again.json()["status"] == "settled"
    assert payments.settlements_prepare() == 0 and Settlement.objects.filter(job=job).count() == 1
    assert wallets.owed(healthcare.wallets.get().address) == units(s.refunded)
    assert wallets.escrow_of(job.escrow.key)[3] == SETTLED
    assert job.events.filter(to_status=S.CANCELLED).count() == 1


def test_an_interrupted_job_cancelled_is_charged_up_to_its_last_checkpoint(
        wallets, healthcare, alice, carol_node):
    job = funded_job(healthcare, budget="10")
    move(job, S.MATCHING, S.RUNNING)
    lost = assignment(job, carol_node, minutes=30, status=A.LOST, price="6")
    checkpoint(lost, after_minutes=20)  # the last 10 minutes are redone elsewhere, not charged
    move(job, S.INTERRUPTED)
    job_cancel(job=job, actor=alice)
    job_cancel(job=job, actor=alice)
    s = settle(job)
    assert (s.charged, s.refunded) == (Decimal("2"), Decimal("8"))
    assert wallets.owed(healthcare.wallets.get().address) == units("8")
    assert Job.objects.get(pk=job.pk).status == S.SETTLED


def test_a_paused_job_whose_escrow_is_refunded_on_chain_ends_refunded(wallets, healthcare, carol_node,
                                                                     admin_user):
    job, _ = paused(healthcare, carol_node)
    wallet = healthcare.wallets.get().address
    before = wallets.balance(wallet)
    with committed():
        payments.escrow_force_refund(job=job, actor=admin_user)
    assert indexer.index_events() == 1
    job.refresh_from_db()
    assert job.status == S.REFUNDED
    assert [e.to_status for e in job.events.exclude(to_status="").order_by("pk")][-3:] == [
        S.PAUSED, S.CANCELLED, S.REFUNDED]
    assert wallets.balance(wallet) == before + units("10")  # the whole deposit goes back
