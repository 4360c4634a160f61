"""Reputation from measured delivery, on real rows: each component, the rolling window,
`new` nodes, and the copy to offers that the filters and matching read."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace.models import (
    Assignment,
    AuditEvent,
    Dispute,
    MetricPoint,
    Node,
    NodeUptime,
    Offer,
    VerificationReport,
)
from marketplace.selectors.offer_search import OfferQuery, offer_search
from marketplace.services import reputation
from marketplace.services.nodes import node_set_presence

from .factories import JobFactory, NodeFactory, OfferFactory

pytestmark = pytest.mark.django_db
A = Assignment.Status


def ran(node: Node, status: str, *, days_ago: float = 1, template: str = "image-classifier",
        samples_per_sec: float | None = None, gpus: int = 1, job_nodes: int = 1) -> Assignment:
    end = timezone.now() - timedelta(days=days_ago)
    job = JobFactory(status=Job_status(status), template=template, nodes=job_nodes)
    offer = node.offers.first() or OfferFactory(node=node)
    a = Assignment.objects.create(job=job, node=node, offer=offer, attempt=1, node_rank=0, gpus=gpus,
                                  price_per_gpu_hour=Decimal("1"), status=status,
                                  started_at=end - timedelta(hours=1), finished_at=end)
    if samples_per_sec is not None:
        for seq in (1, 2, 3):
            MetricPoint.objects.create(job=job, assignment=a, seq=seq, step=seq * 10, total_steps=30,
                                       samples_per_sec=samples_per_sec, at=end - timedelta(minutes=seq))
    return a


def Job_status(status: str) -> str:  # noqa: N802 (reads as the job status that goes with it)
    return "completed" if status == A.SUCCEEDED else "failed"


def passed(a: Assignment) -> None:
    VerificationReport.objects.create(job=a.job, attempt=a.attempt, status="passed", threshold=1e-4)


def test_a_node_with_too_little_history_is_new(db):
    node = NodeFactory()
    offer = OfferFactory(node=node, reliability=Decimal("0.5"))
    ran(node, A.SUCCEEDED)
    ran(node, A.SUCCEEDED)
    node = reputation.node_reputation_update(node_id=node.pk)
    assert node.reliability is None
    assert node.reliability_detail["new"] is True and "2 of the 3" in node.reliability_detail["reason"]
    offer.refresh_from_db()
    assert offer.reliability is None  # a non-zero min_reliability now excludes it
    assert not offer_search(OfferQuery(min_reliability=Decimal("0.1"))).filter(pk=offer.pk).exists()


def test_delivery_counts_succeeded_against_lost_in_the_window(db):
    node = NodeFactory()
    for _ in range(3):
        ran(node, A.SUCCEEDED)
    ran(node, A.LOST)
    ran(node, A.FAILED)  # the job's own failure: not the machine's
    ran(node, A.CANCELLED)
    ran(node, A.LOST, days_ago=31)  # outside the 30 days
    value, detail = reputation.node_reputation_compute(node)
    assert detail["components"]["delivery"] == {"score": 0.75, "good": 3, "total": 4}
    # No other component has data: the score is delivery alone.
    assert detail["components"]["verification"] is None and detail["components"]["throughput"] is None
    assert value == Decimal("0.7500")


def test_verification_pass_rate_counts_disputes_but_not_dismissed_ones(db):
    node = NodeFactory()
    ok = [ran(node, A.SUCCEEDED) for _ in range(3)]
    for a in ok:
        passed(a)
    cheated = ran(node, A.SUCCEEDED)
    Dispute.objects.create(job=cheated.job, assignment=cheated, provider=node.provider,
                           reason=Dispute.Reason.REPLAY_MISMATCH)
    forgiven = ran(node, A.SUCCEEDED)
    Dispute.objects.create(job=forgiven.job, assignment=forgiven, provider=node.provider,
                           reason=Dispute.Reason.METRIC_INFLATED, status=Dispute.Status.DISMISSED)
    value, detail = reputation.node_reputation_compute(node)
    assert detail["components"]["verification"] == {"score": 0.75, "good": 3, "total": 4}
    # delivery 5/5 (weight 0.4) and verification 0.75 (weight 0.3): (0.4 + 0.225) / 0.7
    assert value == Decimal("0.8929")


def test_uptime_comes_from_the_presence_changes(db):
    node = NodeFactory(status=Node.Status.OFFLINE)
    node_set_presence(node_id=node.pk, online=True)
    node_set_presence(node_id=node.pk, online=True)  # a heartbeat: no second stretch
    assert NodeUptime.objects.filter(node=node, online_until__isnull=True).count() == 1
    node_set_presence(node_id=node.pk, online=False)
    assert NodeUptime.objects.get(node=node).online_until is not None
    # Registered 18 hours ago: six hours online, six offline, online for the last six.
    now = timezone.now()
    Node.objects.filter(pk=node.pk).update(created_at=now - timedelta(hours=18))
    node.refresh_from_db()
    NodeUptime.objects.filter(node=node).delete()
    NodeUptime.objects.create(node=node, online_from=now - timedelta(hours=18),
                              online_until=now - timedelta(hours=12))
    NodeUptime.objects.create(node=node, online_from=now - timedelta(hours=6))
    for _ in range(3):
        ran(node, A.SUCCEEDED, days_ago=0.1)
    value, detail = reputation.node_reputation_compute(node, now=now)
    uptime = detail["components"]["uptime"]
    assert uptime["score"] == pytest.approx(12 / 18, abs=1e-3)
    # delivery 1.0 × 0.4 + uptime 0.667 × 0.2, over 0.6
    assert value == Decimal(str(round((0.4 + 0.2 * uptime["score"]) / 0.6, 4)))


def test_throughput_is_delivered_against_benchmarked_relative_to_peers(db):
    fast = NodeFactory(benchmark_tflops=Decimal("100"))
    slow = NodeFactory(benchmark_tflops=Decimal("100"))  # benchmarks as fast, delivers half
    small = NodeFactory(benchmark_tflops=Decimal("50"))  # half the benchmark, half the delivery: fine
    for node, sps in ((fast, 1000.0), (slow, 500.0), (small, 500.0)):
        for _ in range(3):
            ran(node, A.SUCCEEDED, samples_per_sec=sps)
    scores = {n: reputation.node_reputation_compute(n)[1]["components"]["throughput"]["score"]
              for n in (fast, slow, small)}
    assert scores == {fast: 1.0, slow: 0.5, small: 1.0}
    # A node without a benchmark, or alone on its template, has no throughput component.
    lone = NodeFactory(benchmark_tflops=Decimal("10"))
    for _ in range(3):
        ran(lone, A.SUCCEEDED, samples_per_sec=10.0, template="forecaster")
    assert reputation.node_reputation_compute(lone)[1]["components"]["throughput"] is None


def test_the_periodic_pass_updates_nodes_and_their_offers_for_matching(db):
    good, flaky, idle = NodeFactory(), NodeFactory(), NodeFactory(reliability=Decimal("0.9"))
    good_offer, flaky_offer = OfferFactory(node=good), OfferFactory(node=flaky)
    for _ in range(4):
        ran(good, A.SUCCEEDED)
    ran(flaky, A.SUCCEEDED)
    for _ in range(3):
        ran(flaky, A.LOST)
    assert reputation.reputations_update() == 3
    assert Node.objects.get(pk=good.pk).reliability == Decimal("1.0000")
    assert Node.objects.get(pk=flaky.pk).reliability == Decimal("0.2500")
    assert Node.objects.get(pk=idle.pk).reliability is None  # no history left in the window
    assert Offer.objects.get(pk=good_offer.pk).reliability == Decimal("1.0000")
    found = set(offer_search(OfferQuery(min_reliability=Decimal("0.9"))).values_list("pk", flat=True))
    assert good_offer.pk in found and flaky_offer.pk not in found


def test_an_ending_assignment_asks_for_its_node_to_be_recomputed(db, django_capture_on_commit_callbacks,
                                                                monkeypatch):
    from celery import current_app

    from marketplace.services.assignments import assignment_end

    sent = []
    monkeypatch.setattr(current_app, "send_task", lambda name, args=None, **kw: sent.append((name, args)))
    node = NodeFactory()
    a = ran(node, A.SUCCEEDED)
    Assignment.objects.filter(pk=a.pk).update(status=A.RUNNING, finished_at=None)
    with django_capture_on_commit_callbacks(execute=True):
        assert assignment_end(a, A.LOST, "heartbeats stopped")
    assert ("workers.tasks.node_reputation", [node.pk]) in sent


def test_claims_not_lived_up_to_are_recorded_and_weigh(db):
    """Issue 12, item 12: delivered throughput far below the benchmark, and an offer taken
    off the market for listing more hardware than the agent reported, are recorded in the
    node's reputation (`claims`, score 0, weight 0.3)."""
    honest = [NodeFactory(benchmark_tflops=Decimal("100")) for _ in range(2)]
    cheat = NodeFactory(benchmark_tflops=Decimal("100"))  # promises as much, delivers a tenth
    for node, sps in ((honest[0], 1000.0), (honest[1], 1000.0), (cheat, 100.0)):
        for _ in range(3):
            ran(node, A.SUCCEEDED, samples_per_sec=sps)
    value, detail = reputation.node_reputation_compute(cheat)
    claims = detail["components"]["claims"]
    assert claims == {"score": 0.0, "hardware_mismatches": 0,
                      "throughput_far_below_benchmark": ["image-classifier"]}
    # delivery 1 × 0.4, throughput 0.1 × 0.1, claims 0 × 0.3 (no verification, no uptime)
    assert value == Decimal(str(round((0.4 + 0.01) / 0.8, 4)))
    assert reputation.node_reputation_compute(honest[0])[1]["components"]["claims"] is None

    offer = OfferFactory(node=honest[1])
    AuditEvent.objects.create(action="offer.claims_mismatch", object_type="offer", object_id=str(offer.pk),
                              message="Off the market: …", data={"node": honest[1].pk})
    claims = reputation.node_reputation_compute(honest[1])[1]["components"]["claims"]
    assert claims["hardware_mismatches"] == 1 and claims["throughput_far_below_benchmark"] == []
