"""What operators and orchestrators ask a web process: is it alive (`/healthz`), can it serve
(`/readyz`: the database, Redis and, with the escrow on, the chain answer), and its metrics
(`/metrics`, Prometheus text format). docs/operations.md says what to watch.

`/healthz` and `/readyz` are answered first in the middleware chain: before the host check
and the HTTPS redirect, so a container's health check over plain HTTP on 127.0.0.1 works, and
without touching anything a failure could make slow. `/metrics` is for staff sessions, or for
a scraper that sends `Authorization: Bearer <METRICS_TOKEN>` (answered as early, for the same
reasons); without METRICS_TOKEN only staff can read it.
"""

import hmac
import logging
import os
import re
import time
import uuid
from functools import cache

import psycopg
import redis
from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from web3 import Web3

from marketplace import logs, metrics
from marketplace.selectors import operations
from webapp.celery import app as celery_app

log = logging.getLogger(__name__)
# With LOG_FORMAT=json, one record per request (daphne's own access lines are plain text).
access_log = logging.getLogger("computemesh.access")
CHECK_TIMEOUT_S = 3
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")


# --- readiness -------------------------------------------------------------------------
def _check_database() -> None:
    if connection.vendor != "postgresql":
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
        return
    # A connection of its own, with a short connect timeout: the pool would wait its full
    # timeout for a database that is gone, longer than any health check waits.
    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    with psycopg.connect(**params, connect_timeout=CHECK_TIMEOUT_S) as conn:
        conn.execute("SELECT 1")


def _check_redis() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=CHECK_TIMEOUT_S,
                                  socket_connect_timeout=CHECK_TIMEOUT_S)
    try:
        client.ping()
    finally:
        client.close()


@cache
def _rpc(url: str) -> Web3:
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": CHECK_TIMEOUT_S}))


def _check_chain() -> None:
    if settings.CHAIN_RPC_URL:  # empty: this process's own in-process chain, always there
        _rpc(settings.CHAIN_RPC_URL).eth.block_number  # noqa: B018  (the call is the check)


def readiness() -> dict[str, str]:
    """Each dependency this process needs to serve: "ok" or the failure's exception class."""
    checks = {"database": _check_database}
    if settings.REDIS_URL:
        checks["redis"] = _check_redis
    if settings.ESCROW_ENABLED:
        checks["chain"] = _check_chain
    results = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # any failure is "not ready": say which, log the details
            log.warning("readiness: %s failed: %s: %s", name, type(exc).__name__, str(exc)[:300])
            results[name] = type(exc).__name__
    return results


def _ready_response() -> JsonResponse:
    checks = readiness()
    failed = sorted(name for name, outcome in checks.items() if outcome != "ok")
    if failed:
        response = JsonResponse({"status": "unavailable", "failed": failed, "checks": checks}, status=503)
        # An answer, not a server error: readiness() logged the failure as a warning already;
        # Django would log every probe's 503 as an ERROR besides.
        response._has_been_logged = True
        return response
    return JsonResponse({"status": "ready", "checks": checks})


# --- metrics read at scrape time --------------------------------------------------------
def _broker() -> redis.Redis | None:
    url = settings.CELERY_BROKER_URL
    if url.startswith("redis+socket://"):
        url = "unix://" + url.removeprefix("redis+socket://")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None  # the demo's filesystem broker: no depths to read
    return redis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S)


class PlatformCollector(Collector):
    """Gauges read from PostgreSQL, the broker and the chain when /metrics is scraped."""

    def collect(self):
        jobs = GaugeMetricFamily("computemesh_jobs", "Jobs by status.", labels=["status"])
        for status, n in operations.jobs_by_status().items():
            jobs.add_metric([status], n)
        yield jobs
        nodes = operations.nodes_by_status()
        by_status = GaugeMetricFamily("computemesh_nodes", "Provider nodes by status.", labels=["status"])
        for status, n in nodes.items():
            by_status.add_metric([status], n)
        yield by_status
        yield GaugeMetricFamily("computemesh_agents_connected",
                                "Nodes whose agent is connected (online: a fresh heartbeat).",
                                value=nodes.get("online", 0))
        lag = GaugeMetricFamily("computemesh_agent_heartbeat_lag_seconds",
                                "Seconds since the last heartbeat among online nodes: the stalest (max) "
                                "and the freshest (min).", labels=["which"])
        for which, seconds in operations.heartbeat_lag_s().items():
            lag.add_metric([which], seconds)
        yield lag
        yield from self._celery()
        yield from self._chain()

    def _celery(self):
        broker = _broker()
        if broker is None:
            return
        depth = GaugeMetricFamily("computemesh_celery_queue_depth",
                                  "Celery tasks waiting in each queue (the broker's list lengths).",
                                  labels=["queue"])
        try:
            # kombu's Redis transport keeps priorities 3, 6, 9 in lists of their own.
            steps = ["", *(f"\x06\x16{p}" for p in (3, 6, 9))]
            for queue in sorted(q.name for q in celery_app.conf.task_queues):
                depth.add_metric([queue], sum(broker.llen(queue + s) for s in steps))
            unacked = broker.hlen("unacked")
        except redis.RedisError as exc:
            log.warning("metrics: the broker did not answer: %s", exc)
            return
        finally:
            broker.close()
        yield depth
        yield GaugeMetricFamily("computemesh_celery_tasks_reserved",
                                "Tasks delivered to workers, not yet acknowledged (running or prefetched).",
                                value=unacked)

    def _chain(self):
        pending = GaugeMetricFamily("computemesh_chain_pending_transactions",
                                    "The chain sender's transactions without an outcome yet, by status.",
                                    labels=["status"])
        for status, n in operations.chain_pending_by_status().items():
            pending.add_metric([status], n)
        yield pending
        yield GaugeMetricFamily("computemesh_chain_oldest_pending_seconds",
                                "Age of the oldest pending transaction (0 with none).",
                                value=operations.chain_oldest_pending_s())
        if not (settings.ESCROW_ENABLED and settings.CHAIN_RPC_URL):
            return  # an in-process chain belongs to one process: its nonces say nothing here
        lag = GaugeMetricFamily("computemesh_chain_nonce_lag",
                                "Nonces the platform signed that the chain has not mined yet, per sender.",
                                labels=["sender"])
        up = 1
        try:
            w3 = _rpc(settings.CHAIN_RPC_URL)
            for address, next_nonce in operations.chain_sender_accounts(w3.eth.chain_id):
                lag.add_metric([address], next_nonce - w3.eth.get_transaction_count(address, "latest"))
        except Exception as exc:  # the node is away: say so as a value, not as a failed scrape
            log.warning("metrics: the chain did not answer: %s: %s", type(exc).__name__, str(exc)[:300])
            up = 0
        yield lag
        yield GaugeMetricFamily("computemesh_chain_rpc_up", "1 when the chain's JSON-RPC node answered.",
                                value=up)


def exposition() -> bytes:
    """This process's metrics, or every process's (PROMETHEUS_MULTIPROC_DIR), then the
    figures read at scrape time."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        recorded = CollectorRegistry()
        multiprocess.MultiProcessCollector(recorded)
    else:
        recorded = REGISTRY
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(PlatformCollector())
    return generate_latest(recorded) + generate_latest(scraped)


def _bearer_ok(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """/metrics for a staff session (a scraper's bearer token is answered by the middleware)."""
    if not (_bearer_ok(request) or (request.user.is_authenticated and request.user.is_staff)):
        return JsonResponse({"detail": "staff or the metrics token only"}, status=403)
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


# --- the middleware -----------------------------------------------------------------------
class OperationsMiddleware:
    """First in MIDDLEWARE: answers /healthz, /readyz and a token-bearing /metrics; for every
    other request binds its request id (X-Request-ID from the balancer, or a fresh one; sent
    back) and the job of a job URL for the logs, and times it by route."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _early(self, request: HttpRequest):
        """(kind, answer): an answer computed without a thread, or a blocking one to run."""
        if request.path == "/healthz":
            return "now", JsonResponse({"status": "alive"})
        if request.path == "/readyz":
            return "blocking", _ready_response
        if request.path == "/metrics" and _bearer_ok(request):
            return "blocking", lambda: HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
        return None, None

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self._acall(request)
        kind, answer = self._early(request)
        if kind is not None:
            return answer if kind == "now" else answer()
        began = self._bind(request)
        return self._done(request, self.get_response(request), began)

    async def _acall(self, request: HttpRequest):
        kind, answer = self._early(request)
        if kind is not None:
            # On the shared sync thread, as Django runs the ORM: the end of the request
            # returns its database connection to the pool there.
            return answer if kind == "now" else await sync_to_async(answer)()
        began = self._bind(request)
        return self._done(request, await self.get_response(request), began)

    def process_view(self, request, view_func, view_args, view_kwargs):
        job = view_kwargs.get("job_id")
        if job is None and "pk" in view_kwargs and "jobs/" in getattr(request.resolver_match, "route", ""):
            job = view_kwargs["pk"]
        if job is not None and str(job).isdigit():
            logs.job_id_var.set(int(job))
        return None

    @staticmethod
    def _bind(request: HttpRequest) -> float:
        """The request's ids, left bound after the response: Django logs a 4xx or 5xx after
        the middleware has returned. (Under ASGI each request has a context of its own; a
        sync server's thread gets the next request's ids at its start.)"""
        given = request.headers.get("X-Request-ID", "")
        request.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        logs.request_id_var.set(request.request_id)
        logs.job_id_var.set(None)
        return time.perf_counter()

    @staticmethod
    def _done(request: HttpRequest, response: HttpResponse, began: float) -> HttpResponse:
        match = getattr(request, "resolver_match", None)
        if match is not None:  # the pattern, a router's regex groups shown as <name>
            route = "/" + _GROUP.sub(r"<\1>", match.route).strip("^$")
        elif request.path.startswith(settings.STATIC_URL):
            route = "static"
        else:
            route = "unmatched"  # never the raw path: one series per scanner's guess otherwise
        status = f"{response.status_code // 100}xx"
        elapsed = time.perf_counter() - began
        method = request.method if request.method in _METHODS else "other"  # a client writes it
        metrics.HTTP_REQUEST_SECONDS.labels(route, method, status).observe(elapsed)
        response.headers.setdefault("X-Request-ID", request.request_id)
        if settings.LOG_FORMAT == "json":  # the request and job ids are bound: _bind, process_view
            access_log.info("%s %s %d", method, route, response.status_code,
                            extra={"method": method, "route": route, "status": response.status_code,
                                   "duration_ms": round(elapsed * 1000, 2)})
        return response


class WebSocketMetrics:
    """ASGI wrapper of the WebSocket routes: open sockets by kind, handshakes accepted and refused."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        kind = metrics.websocket_kind(scope.get("path", ""))
        state = {"accepted": False, "closed": False}

        async def sending(message):
            if message["type"] == "websocket.accept" and not state["accepted"]:
                state["accepted"] = True
                metrics.WEBSOCKET_CONNECTIONS.labels(kind).inc()
                metrics.WEBSOCKET_CONNECTS.labels(kind, "accepted").inc()
            elif message["type"] == "websocket.close" and not state["accepted"] and not state["closed"]:
                state["closed"] = True
                metrics.WEBSOCKET_CONNECTS.labels(kind, "refused").inc()
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if state["accepted"]:
                metrics.WEBSOCKET_CONNECTIONS.labels(kind).dec()
