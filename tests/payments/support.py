"""Jobs at the points the payment code cares about, built with the platform's own services
(the state machine, `job_fund`, the indexer) so that what is tested is what runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal

from django.test import TestCase
from django.utils import timezone

from marketplace import job_states
from marketplace.chain import indexer
from marketplace.models import Assignment, Checkpoint, Job, Node, Offer
from marketplace.services import funding

from ..factories import JobFactory, OfferFactory

S = Job.Status
A = Assignment.Status
RUN = (S.FUNDED, S.MATCHING, S.RUNNING, S.VERIFYING, S.COMPLETED)


@contextmanager
def committed() -> Iterator[None]:
    """Runs what waits for a commit (broadcasts, task enqueues) when the block ends, as the
    commit of a request or a task would: a test's own transaction never commits."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        yield


def submitted_job(owner, *, budget: str | Decimal = "100", **fields) -> Job:
    return JobFactory(owner=owner, budget=Decimal(budget), status=S.SUBMITTED, **fields)


def funded_job(owner, *, budget: str | Decimal = "100", **fields) -> Job:
    """A submitted job funded from its owner's custodial wallet, the chain's word indexed."""
    job = submitted_job(owner, budget=budget, **fields)
    with committed():
        funding.job_fund(job=job)
    indexer.index_events()
    job.refresh_from_db()
    assert job.status == S.FUNDED, job.events.values_list("reason", "message")
    return job


def move(job: Job, *statuses: str) -> Job:
    for to in statuses:
        job_states.transition(job_id=job.pk, to=to, reason="test", message=f"test: {to}")
    job.refresh_from_db()
    return job


def offer_on(node: Node) -> Offer:
    return node.offers.first() or OfferFactory(node=node)


def assignment(job: Job, node: Node, *, minutes: float, status: str = A.SUCCEEDED, attempt: int = 1,
               rank: int = 0, gpus: int = 1, price: str = "1.20",
               start: datetime | None = None) -> Assignment:
    """An assignment that ran `minutes` from `start` (an hour ago by default)."""
    start = start or timezone.now() - timedelta(hours=1)
    return Assignment.objects.create(
        job=job, node=node, offer=offer_on(node), attempt=attempt, node_rank=rank, gpus=gpus,
        price_per_gpu_hour=Decimal(price), status=status, started_at=start,
        finished_at=start + timedelta(minutes=minutes))


def checkpoint(a: Assignment, *, after_minutes: float, step: int = 10, committed: bool = True) -> Checkpoint:
    at = a.started_at + timedelta(minutes=after_minutes)
    # Checked valid on upload and the work up to it replayed (checkpoint_checks.checkpoint_replay):
    # only such are paid up to.
    return Checkpoint.objects.create(job=a.job, assignment=a, step=step, sha256="0" * 64, size_bytes=1,
                                     file=f"checkpoints/test-{a.pk}-{step}.pt",
                                     committed_at=at if committed else None,
                                     status=Checkpoint.Status.VERIFIED)


def completed_job(owner, node: Node, *, budget: str = "100", minutes: float = 30, gpus: int = 1,
                  price: str = "1.20") -> Job:
    """A funded job that ran `minutes` on `node` and completed."""
    job = funded_job(owner, budget=budget)
    assignment(job, node, minutes=minutes, gpus=gpus, price=price)
    return move(job, S.MATCHING, S.RUNNING, S.VERIFYING, S.COMPLETED)


def units(amount: Decimal | str) -> int:
    return int(Decimal(amount) * 10**6)
