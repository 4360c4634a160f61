"""The operators' metrics that processes record as things happen (Prometheus, prometheus-client).

Every web and worker process records into these; `/metrics` (webapp/ops.py) exposes them
together with the figures it reads at scrape time (jobs by status, connected agents,
heartbeat lag, queue depths, the chain sender's pending transactions). With
PROMETHEUS_MULTIPROC_DIR set (before the process starts) each process writes its values to
files in that one directory and `/metrics` sums them over the processes: set it for every
web and worker process of a host and empty the directory when they (re)start
(docs/operations.md). A leaf: prometheus-client and Celery's signals, nothing of the platform.
"""

import inspect
import os
import time
from functools import cache

from celery import signals
from django.conf import settings
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

# Request and task latencies: 5 ms to 60 s.
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUEST_SECONDS = Histogram(
    "computemesh_http_request_duration_seconds",
    "HTTP request latency by route (the URL pattern, never the raw path), method and status class.",
    ["route", "method", "status"], buckets=_LATENCY)
WEBSOCKET_CONNECTIONS = Gauge(
    "computemesh_websocket_connections",
    "Open WebSocket connections by kind (agent, job, dashboard, market).",
    ["kind"], multiprocess_mode="livesum")
WEBSOCKET_CONNECTS = Counter(
    "computemesh_websocket_connects", "WebSocket handshakes by kind and outcome (accepted or refused).",
    ["kind", "outcome"])
INGEST_BATCH_MESSAGES = Histogram(
    "computemesh_ingest_batch_messages",
    "Agent data messages applied per ingest batch (one transaction: the group commit).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000))
INGEST_BATCH_SECONDS = Histogram(
    "computemesh_ingest_batch_seconds", "Time to persist one ingest batch (before its acks are sent).",
    buckets=_LATENCY)
INGEST_LAG_SECONDS = Histogram(
    "computemesh_ingest_lag_seconds",
    "From an agent data message's arrival on its socket to its batch being persisted.",
    buckets=_LATENCY)
HEARTBEAT_BATCH_MESSAGES = Histogram(
    "computemesh_heartbeat_batch_messages",
    "Agent heartbeats a web process applied in one batch (consumers/batches.py).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
HELLO_BATCH_MESSAGES = Histogram(
    "computemesh_hello_batch_messages",
    "Agent hellos a web process applied in one transaction (consumers/batches.py).",
    buckets=(1, 2, 5, 10, 25))
HEARTBEAT_WRITE_LAG_SECONDS = Histogram(
    "computemesh_heartbeat_write_lag_seconds",
    "From the oldest heartbeat of a batch arriving on its socket to the batch written.",
    buckets=_LATENCY)
CELERY_TASK_SECONDS = Histogram(
    "computemesh_celery_task_duration_seconds", "Celery task run time by task and outcome.",
    ["task", "state"], buckets=_LATENCY)
CELERY_TASK_WAIT_SECONDS = Histogram(
    "computemesh_celery_task_queue_wait_seconds",
    "From a Celery task's publication to a worker starting it, by queue.", ["queue"], buckets=_LATENCY)

_PUBLISHED_AT = "computemesh_published_at"
_started: dict[str, float] = {}


def websocket_kind(path: str) -> str:
    """The socket's kind from its path (/ws/<kind>/…): a bounded label, never an id."""
    parts = [p for p in path.split("/") if p]
    kind = parts[1] if len(parts) > 1 and parts[0] == "ws" else "other"
    return {"jobs": "job"}.get(kind, kind) if kind in ("agent", "jobs", "dashboard", "market") else "other"


def _before_publish(sender=None, headers=None, **_):
    if headers is not None:
        headers[_PUBLISHED_AT] = time.time()


def _prerun(task_id=None, task=None, **_):
    _started[task_id] = time.perf_counter()
    request = task.request
    published = getattr(request, _PUBLISHED_AT, None)
    if published is None and isinstance(getattr(request, "headers", None), dict):
        published = request.headers.get(_PUBLISHED_AT)
    if isinstance(published, int | float):
        queue = (getattr(request, "delivery_info", None) or {}).get("routing_key") or "unknown"
        CELERY_TASK_WAIT_SECONDS.labels(queue).observe(max(0.0, time.time() - published))


def _postrun(task_id=None, task=None, state=None, **_):
    began = _started.pop(task_id, None)
    if began is not None:
        CELERY_TASK_SECONDS.labels(task.name, state or "unknown").observe(time.perf_counter() - began)


def _serve_worker_metrics(sender=None, **_):
    """A Celery worker with METRICS_PORT serves its processes' metrics there (its pool's
    children record into PROMETHEUS_MULTIPROC_DIR): for workers in containers of their own,
    whose files the web processes' /metrics cannot read. Plain HTTP, no auth: bind it to the
    private network only (docs/operations.md)."""
    port = settings.METRICS_PORT
    if not port:
        return
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # prometheus_client's own variable
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=settings.METRICS_ADDR, registry=registry)


@cache
def celery_signals_connected() -> bool:
    """Time every Celery task in this process (idempotent; AppConfig.ready calls it)."""
    signals.before_task_publish.connect(_before_publish, weak=False)
    signals.task_prerun.connect(_prerun, weak=False)
    signals.task_postrun.connect(_postrun, weak=False)
    signals.worker_ready.connect(_serve_worker_metrics, weak=False)
    return True


def task_job_id(task, args, kwargs) -> int | None:
    """The job a task works on, when its signature names one (`job_id`): for the logs."""
    try:
        bound = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {}))
    except (TypeError, ValueError):
        return None
    value = bound.arguments.get("job_id")
    return value if isinstance(value, int) else None
