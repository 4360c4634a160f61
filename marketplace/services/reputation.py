"""Reputation from measured delivery: each node's record over a rolling window
(REPUTATION_WINDOW_DAYS, 30 by default), stored as `Node.reliability` (a share, 0–1; NULL
while the node is `new`) with its components in `Node.reliability_detail`, and copied to the
node's offers so that the offer filters and matching's `min_reliability` use it.

Components, each a share in [0, 1] with its sample size:
- delivery: assignments that succeeded / those that succeeded or were lost with the node
  (heartbeats stopped). Failed and cancelled assignments are left out: a job's own error
  or a consumer's cancellation says nothing about the machine.
- verification: the node's assignments in attempts whose verification passed / those plus
  the assignments a dispute names (dismissed disputes do not count).
- uptime: the share of the window (or of the time since the node first connected, if
  later) that its agent was connected, from the NodeUptime stretches.
- throughput: delivered vs benchmarked. A node's delivered samples/s per benchmarked
  TFLOP/s per GPU (median over its single-node assignments, where the samples/s are its
  own) against the median of that ratio over every node that ran the same template in the
  window, capped at 1: a node that delivers what its benchmark promises, as its peers do,
  scores 1; one that delivers half scores 0.5. Absent without a benchmark or peers.

- claims: present only when the node was caught claiming more than it has in the window
  (an offer taken off the market for listing more hardware than the agent reported, or
  delivered throughput below THROUGHPUT_FLOOR of what its benchmark promises against its
  peers); its score is 0 and its weight 0.3.

The score is the weighted mean of the components that have data (WEIGHTS); a node with
fewer than REPUTATION_MIN_ASSIGNMENTS delivered-or-lost assignments in the window is `new`.
"""

from datetime import timedelta
from decimal import Decimal
from statistics import median

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from ..models import (
    Assignment,
    AuditEvent,
    Dispute,
    MetricPoint,
    Node,
    NodeUptime,
    Offer,
    VerificationReport,
)

A = Assignment.Status
WEIGHTS = {"delivery": 0.4, "verification": 0.3, "uptime": 0.2, "throughput": 0.1, "claims": 0.3}
# Delivered throughput below this share of what the node's benchmark promises (measured
# against its peers on the same template) is a claim the machine does not live up to.
THROUGHPUT_FLOOR = 0.25
FOUR_PLACES = Decimal("0.0001")


def uptime_closed(*, node_id: int, at=None) -> None:
    """The node went offline: close its open stretch."""
    NodeUptime.objects.filter(node_id=node_id, online_until__isnull=True).update(
        online_until=at or timezone.now())


def uptimes_opened(*, node_ids: list[int], at=None) -> None:
    """Nodes came online: a stretch for each that has none open."""
    at = at or timezone.now()
    open_ = set(NodeUptime.objects.filter(node_id__in=node_ids, online_until__isnull=True)
                .values_list("node_id", flat=True))
    NodeUptime.objects.bulk_create([NodeUptime(node_id=i, online_from=at)
                                    for i in node_ids if i not in open_])


def _share(good: int, total: int) -> dict | None:
    return {"score": round(good / total, 4), "good": good, "total": total} if total else None


def _delivery(node: Node, since) -> dict | None:
    counts = Assignment.objects.filter(node=node, finished_at__gte=since).aggregate(
        ok=Count("pk", filter=Q(status=A.SUCCEEDED)), lost=Count("pk", filter=Q(status=A.LOST)))
    return _share(counts["ok"], counts["ok"] + counts["lost"])


def _verification(node: Node, since) -> dict | None:
    mine = Assignment.objects.filter(node=node, finished_at__gte=since)
    # A dispute not attributed to the node (a DDP attempt across nodes) says nothing about it.
    disputed = set(Dispute.objects.filter(assignment__in=mine, attributed=True)
                   .exclude(status=Dispute.Status.DISMISSED)
                   .values_list("assignment_id", flat=True))
    passed_attempts = set(VerificationReport.objects.filter(
        status=VerificationReport.Status.PASSED, job_id__in=mine.values("job_id"))
        .values_list("job_id", "attempt"))
    passed = sum(1 for pk, job, attempt in mine.values_list("pk", "job_id", "attempt")
                 if (job, attempt) in passed_attempts and pk not in disputed)
    return _share(passed, passed + len(disputed))


def _uptime(node: Node, since, now) -> dict | None:
    start = max(since, node.created_at)
    first = NodeUptime.objects.filter(node=node).order_by("online_from").values_list("online_from", flat=True)
    if first:
        start = max(start, first[0])
    span = (now - start).total_seconds()
    if span <= 0 or not first:
        return None
    online = 0.0
    stretches = NodeUptime.objects.filter(node=node).filter(
        Q(online_until__isnull=True) | Q(online_until__gt=start))
    for a, b in stretches.values_list("online_from", "online_until"):
        online += max(0.0, ((b or now) - max(a, start)).total_seconds())
    return {"score": round(min(1.0, online / span), 4), "online_s": round(online), "span_s": round(span)}


def _efficiencies(since) -> dict[str, dict[int, float]]:
    """{template: {node: median samples/s per benchmarked TFLOP/s per GPU}} over the single-
    node assignments that reported throughput in the window."""
    rows: dict[tuple[str, int], list[float]] = {}
    for template, node_id, tflops, gpus, sps in (
            MetricPoint.objects.filter(at__gte=since, samples_per_sec__gt=0, job__nodes=1,
                                       assignment__node__benchmark_tflops__gt=0)
            .values_list("job__template", "assignment__node_id", "assignment__node__benchmark_tflops",
                         "assignment__gpus", "samples_per_sec").iterator(chunk_size=5000)):
        if sps is None or tflops is None:  # the filter above leaves none out; for the type checker
            continue
        rows.setdefault((template, node_id), []).append(sps / (float(tflops) * gpus))
    out: dict[str, dict[int, float]] = {}
    for (template, node_id), values in rows.items():
        out.setdefault(template, {})[node_id] = median(values)
    return out


def _throughput(node: Node, efficiencies: dict[str, dict[int, float]]) -> dict | None:
    ratios = []
    for per_node in efficiencies.values():
        if node.pk in per_node and len(per_node) >= 2:  # peers to compare with
            ratios.append(min(1.0, per_node[node.pk] / median(per_node.values())))
    if not ratios:
        return None
    return {"score": round(sum(ratios) / len(ratios), 4), "templates": len(ratios)}


def _claims(node: Node, since, efficiencies: dict[str, dict[int, float]]) -> dict | None:
    """Claims the machine did not live up to in the window, present only when there are
    any (score 0, so it drags the mean down with its weight): offers taken off the market
    because the agent reported less hardware than listed (services/claims.py), and
    templates on which it delivered less than THROUGHPUT_FLOOR of what its benchmark
    promises, against its peers (an 8× H100 listing running on less shows up here)."""
    mismatches = AuditEvent.objects.filter(action="offer.claims_mismatch", data__node=node.pk,
                                           created_at__gte=since).count()
    slow = sorted(template for template, per_node in efficiencies.items()
                  if node.pk in per_node and len(per_node) >= 2
                  and per_node[node.pk] < THROUGHPUT_FLOOR * median(per_node.values()))
    if not mismatches and not slow:
        return None
    return {"score": 0.0, "hardware_mismatches": mismatches, "throughput_far_below_benchmark": slow}


def node_reputation_compute(node: Node, *, now=None, efficiencies=None) -> tuple[Decimal | None, dict]:
    """(reliability or None for `new`, the components) of one node; writes nothing."""
    now = now or timezone.now()
    since = now - timedelta(days=settings.REPUTATION_WINDOW_DAYS)
    if efficiencies is None:
        efficiencies = _efficiencies(since)
    parts = {"delivery": _delivery(node, since), "verification": _verification(node, since),
             "uptime": _uptime(node, since, now), "throughput": _throughput(node, efficiencies),
             "claims": _claims(node, since, efficiencies)}
    detail = {"window_days": settings.REPUTATION_WINDOW_DAYS, "components": parts}
    history = parts["delivery"]["total"] if parts["delivery"] else 0
    if history < settings.REPUTATION_MIN_ASSIGNMENTS:
        detail["new"] = True
        detail["reason"] = (f"{history} of the {settings.REPUTATION_MIN_ASSIGNMENTS} delivered or lost "
                            f"assignments needed in {settings.REPUTATION_WINDOW_DAYS} days")
        return None, detail
    weighted = [(WEIGHTS[k], v["score"]) for k, v in parts.items() if v is not None]
    score = sum(w * s for w, s in weighted) / sum(w for w, _ in weighted)
    detail["new"] = False
    return Decimal(str(score)).quantize(FOUR_PLACES), detail


def node_reputation_update(*, node_id: int, now=None, efficiencies=None) -> Node:
    """Recompute one node and copy its reliability to its offers."""
    node = Node.objects.get(pk=node_id)
    reliability, detail = node_reputation_compute(node, now=now, efficiencies=efficiencies)
    with transaction.atomic():
        Node.objects.filter(pk=node_id).update(reliability=reliability, reliability_detail=detail,
                                               reliability_at=now or timezone.now())
        # Only offers whose value changes: the search indexes are not rewritten for nothing.
        Offer.objects.filter(node_id=node_id).exclude(reliability=reliability).update(
            reliability=reliability, updated_at=timezone.now())
    node.refresh_from_db()
    return node


def reputations_update(*, now=None) -> int:
    """Every node with activity in the window (the periodic pass)."""
    now = now or timezone.now()
    since = now - timedelta(days=settings.REPUTATION_WINDOW_DAYS)
    efficiencies = _efficiencies(since)
    ids = set(Assignment.objects.filter(finished_at__gte=since).values_list("node_id", flat=True))
    ids |= set(Node.objects.filter(reliability__isnull=False).values_list("pk", flat=True))
    ids |= set(NodeUptime.objects.filter(Q(online_until__isnull=True) | Q(online_until__gte=since))
               .values_list("node_id", flat=True))
    for node_id in sorted(ids):
        node_reputation_update(node_id=node_id, now=now, efficiencies=efficiencies)
    return len(ids)
