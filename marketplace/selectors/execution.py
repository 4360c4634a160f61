"""Read models of a job's execution: progress with an ETA, its assignments, its metrics."""

from collections.abc import Mapping, Sequence
from typing import Any

from django.db.models import F, QuerySet, Window
from django.db.models.functions import RowNumber

from ..models import Assignment, Job, LogLine, MetricPoint
from .metering import provider_earned

ETA_WINDOW = 20  # progress points the step rate is measured over


def is_diloco(job: Job) -> bool:
    """A DiLoCo job across nodes: its nodes meet only at outer steps."""
    return (job.sync or {}).get("mode") == "diloco" and job.nodes > 1


def job_progress(job: Job, recent: Sequence[Mapping[str, Any]] | None = None) -> dict | None:
    """Step, loss, throughput and an ETA from the step rate over the newest points
    (`recent`, newest first, when the caller has fetched them for many jobs at once)."""
    if not job.total_steps:
        return None
    if recent is None:
        recent = list(job.metrics.order_by("-seq").values("step", "at")[:ETA_WINDOW])
    eta = None
    if len(recent) >= 2:
        last, first = recent[0], recent[-1]
        seconds = (last["at"] - first["at"]).total_seconds()
        steps = last["step"] - first["step"]
        if seconds > 0 and steps > 0:
            eta = round((job.total_steps - job.current_step) / (steps / seconds), 1)
    return {
        "step": job.current_step, "total_steps": job.total_steps,
        "percent": round(100 * job.current_step / job.total_steps, 1),
        "loss": job.last_loss, "samples_per_sec": job.samples_per_sec,
        "eta_seconds": eta if job.current_step < job.total_steps else 0,
        "metric": {"name": job.metric_name, "value": job.metric_value} if job.metric_name else None,
        "last_seq": job.metric_seq,
        # Bytes node rank 0 sent to the other nodes in this placement, and DDP's for the same steps.
        "comm_bytes": job.comm_bytes, "comm_bytes_ddp": job.comm_bytes_ddp,
    }


def recent_points(job_ids) -> dict[int, list[Mapping[str, Any]]]:
    """The newest ETA_WINDOW points of each job, newest first: one query for many jobs."""
    rows = (MetricPoint.objects.filter(job_id__in=job_ids)
            .annotate(rank=Window(RowNumber(), partition_by=F("job_id"), order_by=F("seq").desc()))
            .filter(rank__lte=ETA_WINDOW).order_by("job_id", "-seq").values("job_id", "step", "at"))
    out: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["job_id"], []).append(row)
    return out


def job_assignments(job: Job) -> QuerySet[Assignment]:
    return job.assignments.select_related("node", "node__provider").order_by("attempt", "node_rank")


def job_metrics(job: Job, *, after_seq: int = 0, limit: int = 1000) -> QuerySet[MetricPoint]:
    return job.metrics.filter(seq__gt=after_seq).order_by("seq")[:limit]


def job_log_lines(job: Job, *, after_seq: int = 0, rank: int | None = None, q: str = "",
                  limit: int = 1000) -> QuerySet[LogLine]:
    """The job's output lines after `after_seq`, of one rank (or all), containing `q`."""
    lines = job.log_lines.filter(seq__gt=after_seq)
    if rank is not None:
        lines = lines.filter(rank=rank)
    if q:
        lines = lines.filter(line__icontains=q)
    return lines.order_by("seq")[:limit]


def provider_earnings(org) -> dict:
    """What a provider's nodes have run: assignments running now, and what they are owed so
    far at the locked prices, before the platform fee — the settlement's own metering
    (selectors/metering.py), so a failed or disputed attempt is not counted as earned."""
    rows = Assignment.objects.filter(node__provider=org).exclude(started_at__isnull=True)
    return {"running": rows.filter(status__in=Assignment.ACTIVE).count(), "assignments": rows.count(),
            "earned": provider_earned(org.pk)}
