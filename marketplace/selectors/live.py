"""What the browser's live views show: a job's snapshot and brief, a node's brief, an offer's
free capacity, chart points and log lines. Reads only; services/live.py sends them."""

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from django.db.models import F, Prefetch, Window
from django.db.models.functions import RowNumber

from ..models import Assignment, Job, JobEvent, LogLine, MetricPoint
from .budget import budget_view
from .execution import job_progress, recent_points
from .metering import job_metered


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
    return {"seq": line.seq, "rank": line.rank, "stream": line.stream, "line": line.line,
            "at": _iso(line.at)}


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
    recent = [_event(e) for e in events][::-1]
    spent = cost_so_far(job)
    return {
        "id": job.pk, "status": job.status, "status_display": job.get_status_display(),
        "progress": job_progress(job, points), "cost_so_far": str(spent),
        "spend": budget_view(job, spent=spent),
        "event": recent[-1] if recent else None, "events": recent,
    }


def job_snapshots(job_ids: Iterable[int], *, events: int = 10) -> list[tuple[Job, dict]]:
    """Jobs with their snapshots, in four queries however many jobs. `events` is how many of
    each job's newest timeline entries go along. The jobs come with their assignments' nodes
    (who watches them: the owner and the providers)."""
    ids = list(job_ids)
    jobs = Job.objects.filter(pk__in=ids).select_related("escrow").prefetch_related(
        Prefetch("assignments", queryset=Assignment.objects.select_related("node")), "disputes")
    newest: dict[int, list] = {}
    for e in (JobEvent.objects.filter(job_id__in=ids)
              .annotate(rank=Window(RowNumber(), partition_by=F("job_id"), order_by=F("id").desc()))
              .filter(rank__lte=events).order_by("job_id", "-id")):
        newest.setdefault(e.job_id, []).append(e)
    points = recent_points(ids)
    return [(job, job_snapshot(job, events=newest.get(job.pk, []), points=points.get(job.pk, [])))
            for job in jobs]


def job_watchers(job: Job) -> set[int]:
    """The organizations whose dashboards show the job: its owner and its providers."""
    return {job.owner_id} | {a.node.provider_id for a in job.assignments.all()}


def job_brief(job: Job, snapshot: dict | None = None) -> dict:
    """A job's line on its owner's and providers' dashboards."""
    progress = snapshot["progress"] if snapshot else job_progress(job)
    if snapshot is None:
        spent = cost_so_far(job)
        snapshot = {"cost_so_far": str(spent), "spend": budget_view(job, spent=spent)}
    return {"id": job.pk, "name": job.name, "status": job.status,
            "status_display": job.get_status_display(),
            "percent": progress["percent"] if progress else None,
            "cost_so_far": snapshot["cost_so_far"], "budget_warning": snapshot["spend"]["warning"]}


def history(job: Job, *, after_seq: int, after_log_seq: int, limit: int = 5000) -> dict:
    """What a job page that (re)connects missed: points and log lines after its last ones."""
    return {
        "type": "history",
        "metrics": [point(p) for p in job.metrics.filter(seq__gt=after_seq).order_by("seq")[:limit]],
        # The newest 500 lines at most: a log tail, not an archive.
        "logs": [log_line(x) for x in
                 job.log_lines.filter(seq__gt=after_log_seq).order_by("-seq")[:500]][::-1],
        "job": job_snapshot(job),
    }


def node_brief(node) -> dict:
    return {"id": node.pk, "name": node.name, "status": node.status,
            "status_display": node.get_status_display(),
            "last_heartbeat_at": _iso(node.last_heartbeat_at),
            "benchmark_tflops": str(node.benchmark_tflops) if node.benchmark_tflops is not None else None}


OFFER_FIELDS = ("pk", "gpus_offered", "gpus_reserved", "status", "node_online")


def offer_brief(o: Mapping[str, Any]) -> dict:
    """An offer's free capacity (from a values() row of OFFER_FIELDS)."""
    return {"id": o["pk"], "gpus_available": o["gpus_offered"] - o["gpus_reserved"],
            "status": o["status"], "online": o["node_online"]}
