"""Live updates for the browser: what is sent to a job's Channels group, always after the
data is committed (persist first, broadcast second). Group messages may be lost; browsers
resync from the database by sequence number, so a lost one is only late."""

import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models import F, Prefetch, Window
from django.db.models.functions import RowNumber

from ..models import Assignment, Job, LogLine, MetricPoint
from ..selectors.execution import job_progress
from ..selectors.metering import job_metered


def job_group(job_id: int) -> str:
    return f"job.{job_id}"


_batch = threading.local()


def _deliver(group: str, event: dict) -> None:
    """Send to a group now, or add it to the active outbox (sent by the caller's loop)."""
    outbox = getattr(_batch, "outbox", None)
    if outbox is not None:
        outbox.append((group, event))
        return
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(group, event)


@contextmanager
def coalesced(outbox: list | None = None, deferred: set | None = None):
    """While active (in this thread), broadcasts are gathered and sent once at the end: one
    metrics message and one logs message per job, one snapshot per job. Nothing is sent if
    the block fails (its transaction rolled back). With `outbox`, the (group, event) pairs
    are appended to it instead of sent: an async caller sends them without a round trip
    through a thread for each. With `deferred`, the jobs due a progress snapshot are added
    to it instead (the caller sends `snapshots` for them, at its own pace)."""
    _batch.messages, _batch.changed, _batch.throttled = defaultdict(list), set(), set()
    try:
        yield
    except BaseException:
        _batch.messages = _batch.changed = _batch.throttled = None
        raise
    messages, changed, throttled = _batch.messages, _batch.changed, _batch.throttled
    _batch.messages = _batch.changed = _batch.throttled = None
    _batch.outbox = outbox
    try:
        for job_id, items in messages.items():
            for kind, key in (("metrics", "points"), ("logs", "lines")):
                merged = [x for m in items if m["type"] == kind for x in m[key]]
                if merged:
                    _deliver(job_group(job_id),
                             {"type": "job.update", "message": {"type": kind, key: merged}})
        for job_id in changed:
            job_changed(job_id)
        if deferred is not None:
            deferred.update(throttled - changed)
        else:
            for job_id in throttled - changed:
                job_changed(job_id, throttle=True)
    finally:
        _batch.outbox = None


def _gathering() -> bool:
    return getattr(_batch, "messages", None) is not None


def broadcast(job_id: int, message: dict) -> None:
    if _gathering():
        _batch.messages[job_id].append(message)
        return
    transaction.on_commit(lambda: _deliver(job_group(job_id), {"type": "job.update", "message": message}))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def point(p: MetricPoint | SimpleNamespace) -> dict:
    """A metrics point for the chart: a saved MetricPoint, or its fields before the bulk insert."""
    return {"seq": p.seq, "step": p.step, "total_steps": p.total_steps, "epoch": p.epoch,
            "loss": p.loss, "samples_per_sec": p.samples_per_sec, "comm_bytes": p.comm_bytes,
            "comm_bytes_ddp": p.comm_bytes_ddp, "at": _iso(p.at)}


def point_values(values: dict) -> dict:
    """`point` for a sample not (yet) loaded as a model: a dict of its fields."""
    return {**values, "at": _iso(values["at"])}


def log_line(line: LogLine) -> dict:
    return {"seq": line.seq, "line": line.line, "at": _iso(line.at)}


def cost_so_far(job: Job, *, now: datetime | None = None) -> Decimal:
    """What the job has spent so far: the settlement's own metering, running parts until now."""
    return job_metered(job, now=now)


def _event(e) -> dict:
    return {"at": _iso(e.created_at), "from_status": e.from_status, "to_status": e.to_status,
            "reason": e.reason, "message": e.message}


def job_snapshot(job: Job, *, events=None, points=None) -> dict:
    """The job as its page shows it. `events` are the newest timeline entries, oldest
    first (one commit can add several); `event` is the newest. `events` and `points` (newest
    first) may come from the caller, fetched for many jobs at once."""
    if events is None:
        events = job.events.order_by("-id")[:10]
    from .budget import budget_view  # budget → execution → live

    recent = [_event(e) for e in events][::-1]
    spent = cost_so_far(job)
    return {
        "id": job.pk, "status": job.status, "status_display": job.get_status_display(),
        "progress": job_progress(job, points), "cost_so_far": str(spent),
        "spend": budget_view(job, spent=spent),
        "event": recent[-1] if recent else None, "events": recent,
    }


_last_snapshot: dict[int, float] = {}
SNAPSHOT_EVERY_S = 2.0


def _snapshot_due(job_id: int) -> bool:
    """At most one progress snapshot every two seconds per job from this process (a dict, not a
    Redis round trip: this runs for every batch of progress)."""
    now = time.monotonic()
    if now - _last_snapshot.get(job_id, -SNAPSHOT_EVERY_S) < SNAPSHOT_EVERY_S:
        return False
    if len(_last_snapshot) > 10_000:
        _last_snapshot.clear()
    _last_snapshot[job_id] = now
    return True


def job_changed(job_id: int, *, throttle: bool = False) -> None:
    """Tell the job's watchers its current state, once the transaction commits. Progress
    asks with `throttle`: at most one snapshot every SNAPSHOT_EVERY_S per job (status changes always go)."""
    if _gathering():
        (_batch.throttled if throttle else _batch.changed).add(job_id)
        return
    if throttle and not _snapshot_due(job_id):
        return

    def send():
        for group, event in snapshots([job_id]):
            _deliver(group, event)
    transaction.on_commit(send)


def snapshots(job_ids, *, events: int = 10) -> list[tuple[str, dict]]:
    """Snapshots of jobs for their pages and for their owner's and providers' dashboards, as
    (group, event) pairs for the caller to send, in four queries however many jobs: after a
    status change (one job) and from the agent ingest every few seconds per busy job
    (`events=1`: progress adds no timeline entries). `events` is how many of each job's
    newest timeline entries go along (one commit can add several)."""
    from ..models import JobEvent
    from ..selectors.execution import recent_points

    ids = list(job_ids)
    jobs = Job.objects.filter(pk__in=ids).select_related("escrow").prefetch_related(
        Prefetch("assignments", queryset=Assignment.objects.select_related("node")), "disputes")
    newest: dict[int, list] = {}
    for e in (JobEvent.objects.filter(job_id__in=ids)
              .annotate(rank=Window(RowNumber(), partition_by=F("job_id"), order_by=F("id").desc()))
              .filter(rank__lte=events).order_by("job_id", "-id")):
        newest.setdefault(e.job_id, []).append(e)
    points = recent_points(ids)
    out = []
    for job in jobs:
        snapshot = job_snapshot(job, events=newest.get(job.pk, []), points=points.get(job.pk, []))
        out.append((job_group(job.pk), {"type": "job.update", "message": {"type": "job", "job": snapshot}}))
        brief = {"type": "job", "job": job_brief(job, snapshot)}
        for org_id in {job.owner_id} | {a.node.provider_id for a in job.assignments.all()}:
            out.append((org_group(org_id), {"type": "live.update", "message": brief}))
    return out


def history(job: Job, *, after_seq: int, after_log_seq: int, limit: int = 5000) -> dict:
    return {
        "type": "history",
        "metrics": [point(p) for p in job.metrics.filter(seq__gt=after_seq).order_by("seq")[:limit]],
        # The newest 500 lines at most: a log tail, not an archive.
        "logs": [log_line(x) for x in
                 job.log_lines.filter(seq__gt=after_log_seq).order_by("-seq")[:500]][::-1],
        "job": job_snapshot(job),
    }


# --- dashboards and the marketplace ---------------------------------------------------
def org_group(org_id: int) -> str:
    return f"org.{org_id}"


MARKET_GROUP = "market"


def _send(group: str, message: dict, *, kind: str = "live.update") -> None:
    _deliver(group, {"type": kind, "message": message})


def job_brief(job: Job, snapshot: dict | None = None) -> dict:
    from .budget import budget_view  # budget → execution → live

    progress = snapshot["progress"] if snapshot else job_progress(job)
    if snapshot is None:
        spent = cost_so_far(job)
        snapshot = {"cost_so_far": str(spent), "spend": budget_view(job, spent=spent)}
    return {"id": job.pk, "name": job.name, "status": job.status,
            "status_display": job.get_status_display(),
            "percent": progress["percent"] if progress else None,
            "cost_so_far": snapshot["cost_so_far"], "budget_warning": snapshot["spend"]["warning"]}


def node_brief(node) -> dict:
    return {"id": node.pk, "name": node.name, "status": node.status,
            "status_display": node.get_status_display(),
            "last_heartbeat_at": _iso(node.last_heartbeat_at),
            "benchmark_tflops": str(node.benchmark_tflops) if node.benchmark_tflops is not None else None}


def node_changed(node) -> None:
    """A node went online or offline: its provider's dashboard and the offers pages."""
    brief = node_brief(node)
    offers = list(node.offers.values("pk", "gpus_offered", "gpus_reserved", "status", "node_online"))

    def send():
        _send(org_group(node.provider_id), {"type": "node", "node": brief})
        for o in offers:
            _send(MARKET_GROUP, {"type": "offer", "offer": _offer_brief(o)})
    transaction.on_commit(send)


def _offer_brief(o: Mapping[str, Any]) -> dict:
    return {"id": o["pk"], "gpus_available": o["gpus_offered"] - o["gpus_reserved"],
            "status": o["status"], "online": o["node_online"]}


def offers_changed(offer_ids) -> None:
    """Offers whose free capacity or status changed: the marketplace pages update."""
    from ..models import Offer

    ids = list(offer_ids)

    def send():
        for o in Offer.objects.filter(pk__in=ids).values("pk", "gpus_offered", "gpus_reserved",
                                                          "status", "node_online"):
            _send(MARKET_GROUP, {"type": "offer", "offer": _offer_brief(o)})
    transaction.on_commit(send)
