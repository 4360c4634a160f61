"""Metering a stopped job: GPU-seconds at each assignment's locked price, only for work that
survived; the statement, the provider payouts (capped by the escrow), the platform fee and
what goes back to the consumer. Database only: no chain is involved until the batch."""

from __future__ import annotations

import secrets
from decimal import Decimal

import pytest

from marketplace.models import Assignment, Escrow, Job
from marketplace.selectors.metering import job_statement
from marketplace.services.payments import settlement_prepare

from ..factories import JobFactory
from .support import assignment, checkpoint

pytestmark = pytest.mark.django_db
S = Job.Status
A = Assignment.Status


def job_with_escrow(owner, *, status: str, deposit: str = "100") -> Job:
    job = JobFactory(owner=owner, status=status, budget=Decimal(deposit))
    Escrow.objects.create(job=job, key="0x" + secrets.token_hex(32), status=Escrow.Status.FUNDED,
                          amount=Decimal(deposit))
    return job


def amounts(lines: list[dict]) -> list[tuple[int, int, str, str]]:
    return [(line["attempt"], line["rank"], line["status"], line["amount"]) for line in lines]


def test_succeeded_and_cancelled_work_is_charged_to_its_end(healthcare, carol_node, dave_node):
    done = job_with_escrow(healthcare, status=S.COMPLETED)
    assignment(done, carol_node, minutes=30, gpus=2, price="1.20", rank=0)
    assignment(done, dave_node, minutes=30, gpus=1, price="2.00", rank=1)
    stopped = job_with_escrow(healthcare, status=S.CANCELLED)
    assignment(stopped, carol_node, minutes=45, price="1.20", status=A.CANCELLED)
    never = assignment(stopped, dave_node, minutes=5, attempt=2, price="2.00", status=A.CANCELLED)
    Assignment.objects.filter(pk=never.pk).update(started_at=None)  # cancelled before it started

    lines, total = job_statement(done)
    assert amounts(lines) == [(1, 0, "succeeded", "1.200000"), (1, 1, "succeeded", "1.000000")]
    assert [line["gpu_seconds"] for line in lines] == [3600.0, 1800.0]
    assert total == Decimal("2.2")
    lines, total = job_statement(stopped)
    assert [line["amount"] for line in lines] == ["0.900000", "0.000000"] and total == Decimal("0.9")


def test_an_attempt_that_lost_a_node_is_charged_only_up_to_its_last_committed_checkpoint(
        healthcare, carol_node, dave_node):
    job = job_with_escrow(healthcare, status=S.COMPLETED)
    # Attempt 1: dave's node is lost after 30 minutes; carol's rank 0 is stopped with it.
    # The last committed checkpoint was at 10 minutes: the 20 minutes after it are redone.
    first = assignment(job, carol_node, minutes=30, status=A.CANCELLED, rank=0)
    assignment(job, dave_node, minutes=30, status=A.LOST, rank=1, start=first.started_at)
    checkpoint(first, after_minutes=5, step=10)
    checkpoint(first, after_minutes=10, step=20)
    checkpoint(first, after_minutes=25, step=50, committed=False)  # never committed: not work kept
    # Attempt 2 resumes from step 20 on two nodes and finishes after 20 minutes.
    later = first.finished_at
    assignment(job, carol_node, minutes=20, attempt=2, rank=0, start=later)
    assignment(job, dave_node, minutes=20, attempt=2, rank=1, start=later)

    lines, total = job_statement(job)

    assert amounts(lines) == [(1, 0, "cancelled", "0.200000"), (1, 1, "lost", "0.200000"),
                              (2, 0, "succeeded", "0.400000"), (2, 1, "succeeded", "0.400000")]
    assert total == Decimal("1.2")
    assert all("not charged" in line["note"] for line in lines[:2])


def test_an_attempt_that_lost_its_node_before_any_checkpoint_costs_nothing(healthcare, carol_node,
                                                                            dave_node):
    job = job_with_escrow(healthcare, status=S.FAILED)
    lost = assignment(job, carol_node, minutes=40, status=A.LOST)
    failed = assignment(job, dave_node, minutes=15, status=A.FAILED, attempt=2, start=lost.finished_at)
    checkpoint(lost, after_minutes=30, committed=False)
    assert failed.pk

    lines, total = job_statement(job)

    assert [line["amount"] for line in lines] == ["0.000000", "0.000000"] and total == 0


def test_settlement_pays_each_provider_after_the_fee_and_returns_the_rest(
        healthcare, carol_node, dave_node, settings):
    settings.PLATFORM_FEE_BPS = 1000
    job = job_with_escrow(healthcare, status=S.COMPLETED, deposit="100")
    assignment(job, carol_node, minutes=60, gpus=1, price="1.50", rank=0)
    assignment(job, dave_node, minutes=30, gpus=1, price="1.00", rank=1)

    s = settlement_prepare(job=job)

    assert (s.charged, s.fee, s.refunded) == (Decimal("2.0"), Decimal("0.2"), Decimal("98.0"))
    assert {p.provider.name: p.amount for p in s.payouts.all()} == {
        carol_node.provider.name: Decimal("1.35"), dave_node.provider.name: Decimal("0.45")}
    assert s.status == "pending" and len(s.statement) == 2
    assert settlement_prepare(job=job) == s  # metered once
    assert s.payouts.count() == 2


def test_payouts_are_capped_by_the_escrow(healthcare, carol_node, dave_node):
    job = job_with_escrow(healthcare, status=S.COMPLETED, deposit="0.50")
    assignment(job, carol_node, minutes=30, gpus=1, price="1.20", rank=0)   # 0.60
    assignment(job, dave_node, minutes=30, gpus=1, price="0.80", rank=1)    # 0.40

    s = settlement_prepare(job=job)

    assert (s.charged, s.refunded) == (Decimal("0.5"), Decimal("0"))
    payouts = {p.provider_id: p.amount for p in s.payouts.all()}
    assert payouts == {carol_node.provider_id: Decimal("0.285"), dave_node.provider_id: Decimal("0.19")}
    assert s.fee == Decimal("0.025")  # 5 % of what was charged
    assert sum(payouts.values()) + s.fee == s.charged


def test_only_a_stopped_funded_job_is_metered(healthcare, carol_node):
    running = job_with_escrow(healthcare, status=S.RUNNING)
    assignment(running, carol_node, minutes=10)
    unfunded = JobFactory(owner=healthcare, status=S.COMPLETED)
    assert settlement_prepare(job=running) is None
    assert settlement_prepare(job=unfunded) is None


@pytest.mark.django_db(transaction=True)
def test_two_workers_metering_at_once_make_one_statement_per_job(healthcare, carol_node):
    import threading

    from django.db import connection

    from marketplace.models import Settlement
    from marketplace.services.payments import settlements_prepare

    jobs = [job_with_escrow(healthcare, status=S.COMPLETED) for _ in range(8)]
    for job in jobs:
        assignment(job, carol_node, minutes=10)
    start, errors, made = threading.Barrier(2), [], []

    def prepare():
        try:
            start.wait()
            made.append(settlements_prepare())
        except BaseException as exc:  # noqa: BLE001 (reported by the test thread)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert not errors, errors
    assert len(made) == 2
    assert sorted(Settlement.objects.values_list("job_id", flat=True)) == sorted(j.pk for j in jobs)
