"""What operators ask the platform (webapp/ops.py): /healthz, /readyz, /metrics, JSON logs.

Real parts throughout: daphne, PostgreSQL reached through a TCP relay this test can cut (the
machine's PostgreSQL keeps running for everyone else), a Celery worker with beat, a real
agent training a job paid through the escrow on hardhat's JSON-RPC node, a job page's socket."""

import contextvars
import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client as DjangoClient
from django.utils import timezone
from rest_framework.authtoken.models import Token

from marketplace import task_names
from marketplace.chain import deploy
from marketplace.models import Job

from .browser_support import ROOT, daphne_process, free_port
from .payments import test_chain_integration as paid
from .stack import Stack, wait_for
from .test_execution_e2e import wait_status
from .test_web_scale_out import Viewer

node, on_node = paid.node, paid.on_node  # the hardhat node, and this process on it (fixtures)
TOKEN = "metrics-token-for-tests-only"


def get(url: str, headers: dict | None = None):
    """(status, body, headers: case-insensitive)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


class Relay:
    """A TCP relay from a local port to PostgreSQL; `cut()` closes it and every connection
    through it (to the server behind it the database is gone), `mend()` opens it again."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream, self.port = upstream, free_port()
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def mend(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def cut(self) -> None:
        try:  # wakes the accepting thread (a bare close would leave the port listening)
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_healthz_is_alive_for_any_host_without_touching_a_dependency(client):
    # No django_db mark: a query here would fail the test.
    response = client.get("/healthz", HTTP_HOST="10.11.12.13:8000")  # not in ALLOWED_HOSTS
    assert response.status_code == 200 and response.json() == {"status": "alive"}


@pytest.mark.django_db(transaction=True)
def test_readyz_fails_when_postgresql_is_unreachable_and_recovers():
    db = settings.DATABASES["default"]
    relay = Relay((db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)))
    relay.mend()
    url = f"postgres://{db['USER']}@127.0.0.1:{relay.port}/{db['NAME']}"
    try:
        with daphne_process(logs="operations", DATABASE_URL=url) as (base, _pid):
            status, body, _ = get(base + "/readyz")
            assert status == 200, body
            assert json.loads(body) == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}

            relay.cut()
            began = time.monotonic()
            status, body, _ = get(base + "/readyz", {"Host": "10.0.0.9"})  # any host, as a probe sends
            answer = json.loads(body)
            assert status == 503, answer
            assert answer["status"] == "unavailable" and answer["failed"] == ["database"], answer
            assert answer["checks"]["redis"] == "ok" and answer["checks"]["database"] != "ok", answer
            assert time.monotonic() - began < 10, "a probe must not wait out the pool's timeout"
            # Alive all the same: nothing restarts a process for its database's sake.
            assert get(base + "/healthz")[0] == 200

            relay.mend()
            status, body = wait_for(lambda: (r := get(base + "/readyz"))[0] == 200 and r[:2],
                                    timeout=30, what="/readyz to recover")
            assert json.loads(body)["status"] == "ready"
            # And the pool serves again, not only the probe's own connection.
            wait_for(lambda: get(base + "/api/v1/templates/")[0] == 200, timeout=30,
                     what="the API to answer again")
    finally:
        relay.cut()


@pytest.mark.django_db(transaction=True)  # the server's database exists
def test_readyz_names_redis_while_it_is_down(tmp_path):
    from .stack import RedisServer

    own = RedisServer(tmp_path).start()
    try:
        with daphne_process(logs="operations", REDIS_URL=own.url) as (base, _pid):
            assert get(base + "/readyz")[0] == 200
            own.stop()
            status, body, _ = get(base + "/readyz")
            assert status == 503 and json.loads(body)["failed"] == ["redis"], body
            own.start()
            wait_for(lambda: get(base + "/readyz")[0] == 200, timeout=30, what="/readyz to recover")
    finally:
        own.stop()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)  # the server's database exists
def test_readyz_names_the_chain_while_its_node_is_unreachable_and_recovers(node):
    relay = Relay(("127.0.0.1", int(node.rsplit(":", 1)[1])))  # hardhat's JSON-RPC node
    relay.mend()
    try:
        with daphne_process(logs="operations", ESCROW_ENABLED="1",
                            CHAIN_RPC_URL=f"http://127.0.0.1:{relay.port}") as (base, _pid):
            status, body, _ = get(base + "/readyz")
            assert status == 200 and json.loads(body)["checks"]["chain"] == "ok", body
            relay.cut()
            began = time.monotonic()
            status, body, _ = get(base + "/readyz")
            answer = json.loads(body)
            assert status == 503 and answer["failed"] == ["chain"], answer
            assert time.monotonic() - began < 10, "a probe must not wait out the node's timeout"
            relay.mend()
            wait_for(lambda: get(base + "/readyz")[0] == 200, timeout=30, what="/readyz to recover")
    finally:
        relay.cut()


def test_metrics_needs_staff_or_the_token(client, admin_user, settings, db):
    settings.METRICS_TOKEN = TOKEN
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    ok = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_HOST="10.1.1.1:8000")
    assert ok.status_code == 200 and b"computemesh_jobs" in ok.content
    client.force_login(admin_user)
    assert client.get("/metrics").status_code == 200
    settings.METRICS_TOKEN = ""
    client.logout()
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403  # no token: none


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(name, labels) -> value from the Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        assert m, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def sockets(found: dict, kind: str) -> float:
    """Open WebSockets of a kind (0 before the first: no series yet)."""
    return sum(v for (n, ls), v in found.items()
               if n == "computemesh_websocket_connections" and ("kind", kind) in ls)


def value(found: dict, name: str, **labels) -> float:
    want = set(labels.items())
    matching = [v for (n, ls), v in found.items() if n == name and want <= ls]
    assert matching, f"{name}{labels} not exposed; exposed: {sorted({n for n, _ in found})}"
    return sum(matching)


# Every metric the issue asks for (issue 19, "What operators expect"), each named by what it
# answers; the test below checks that /metrics exposes each after a paid job has run.
EXPECTED = {
    "request latency by route": "computemesh_http_request_duration_seconds_count",
    "WebSocket connections by kind": "computemesh_websocket_connections",
    "connected agents": "computemesh_agents_connected",
    "heartbeat lag": "computemesh_agent_heartbeat_lag_seconds",
    "heartbeat batches": "computemesh_heartbeat_write_lag_seconds_count",
    "ingest batch size": "computemesh_ingest_batch_messages_count",
    "ingest lag": "computemesh_ingest_lag_seconds_count",
    "Celery queue depths": "computemesh_celery_queue_depth",
    "Celery task latency": "computemesh_celery_task_duration_seconds_count",
    "Celery queue wait": "computemesh_celery_task_queue_wait_seconds_count",
    "jobs by status": "computemesh_jobs",
    "chain sender's pending transactions": "computemesh_chain_pending_transactions",
    "chain sender's nonce lag": "computemesh_chain_nonce_lag",
}


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_each_metric_after_a_paid_job_runs_and_json_logs_with_request_and_job_ids(on_node, tmp_path):
    """A real agent trains a job funded through the escrow on hardhat's JSON-RPC node; daphne
    and a Celery worker (with beat, on every queue) record into one PROMETHEUS_MULTIPROC_DIR;
    a job page's socket watches. /metrics then answers every figure an operator watches."""
    org, token = paid.consumer()
    _provider, _node, node_token = paid.cpu_provider()
    paid.chain_deploy()
    browser = DjangoClient()
    browser.force_login(Token.objects.get(key=token).user)

    stack = Stack(tmp_path, heartbeat_timeout_s=30, queues="default,dispatch,verify,chain")
    worker_port = free_port()
    stack.env.update(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"), METRICS_TOKEN=TOKEN,
                     LOG_FORMAT="json", METRICS_PORT=str(worker_port), METRICS_ADDR="127.0.0.1",
                     ESCROW_ENABLED="1", CHAIN_RPC_URL=on_node, SETTLEMENT_INTERVAL_S="2",
                     CHAIN_RESEND_AFTER_S="1")
    (tmp_path / "prometheus").mkdir()

    def scrape() -> dict:
        return samples(get(stack.base + "/metrics", {"Authorization": f"Bearer {TOKEN}"})[1].decode())

    stack.start()
    viewer = None
    try:
        stack.agent("metrics-agent", node_token)
        status, _, headers = get(stack.base + "/api/v1/jobs/987654/", {"X-Request-ID": "probe-42"})
        assert status in (401, 403, 404) and headers.get("X-Request-ID") == "probe-42"
        code, job = stack.http("POST", "/api/v1/jobs/", token=token, body={
            "name": "Metered run", "template": "tabular-classifier", "params": {"epochs": 3},
            "dataset": "sample:breast-cancer", "nodes": 1, "gpus_per_node": 2, "gpu_models": ["cpu"],
            "max_price_per_gpu_hour": "5.00", "budget": "10.00",
            "deadline": (timezone.now() + timedelta(days=1)).isoformat()})
        assert code == 201, job
        code, funded = stack.http("POST", f"/api/v1/jobs/{job['id']}/fund/", token=token,
                                  body={"amount": "10"})
        assert code == 200, funded
        viewer = Viewer(f"{stack.base.replace('http', 'ws')}/ws/jobs/{job['id']}/",
                        f"sessionid={browser.cookies['sessionid'].value}", stack.base).start()
        # While the agent's and the page's sockets are open: counted by kind.
        def both_open() -> dict | None:
            found = scrape()
            return found if sockets(found, "job") == 1 and sockets(found, "agent") == 1 else None

        during = wait_for(both_open, timeout=60, what="the agent's and the page's sockets to be counted")
        assert sockets(during, "dashboard") == 0

        wait_status(stack, token, job["id"], {"settled"}, timeout=300)
        wait_for(lambda: viewer.status == "settled", timeout=30, what="the page to see the job settled")
        viewer.stop()
        paid_job = Job.objects.get(pk=job["id"])

        def after() -> dict | None:
            found = scrape()
            settle = {("task", task_names.SETTLE_PENDING), ("state", "SUCCESS")}
            settled = [v for (n, ls), v in found.items()
                       if n == "computemesh_celery_task_duration_seconds_count" and settle <= ls]
            pending = sum(v for (n, _), v in found.items() if n == "computemesh_chain_pending_transactions")
            return found if sum(settled) and pending == 0 and sockets(found, "job") == 0 else None

        found = wait_for(after, timeout=60, what="the settlement's transactions to be confirmed")
        exposed = {n for n, _ in found}
        assert not {what for what, name in EXPECTED.items() if name not in exposed}, exposed

        # Each figure says what happened, not merely that it exists.
        assert value(found, "computemesh_http_request_duration_seconds_count",
                     route="/api/v1/jobs/", method="POST", status="2xx") == 1
        assert value(found, "computemesh_http_request_duration_seconds_count",
                     route="/api/v1/jobs/<pk>/", method="GET", status="2xx") >= 1
        assert value(found, "computemesh_http_request_duration_seconds_count",
                     route="/api/v1/jobs/<pk>/", method="GET", status="4xx") == 1  # the probe
        assert value(found, "computemesh_websocket_connections", kind="agent") == 1  # still there
        assert value(found, "computemesh_websocket_connects_total", kind="job", outcome="accepted") >= 1
        assert value(found, "computemesh_agents_connected") == 1
        assert 0 <= value(found, "computemesh_agent_heartbeat_lag_seconds", which="max") < 30
        assert value(found, "computemesh_heartbeat_batch_messages_sum") >= 5  # one a second
        assert value(found, "computemesh_heartbeat_write_lag_seconds_count") >= 1
        points = paid_job.metrics.count()
        assert points >= 1 and value(found, "computemesh_ingest_batch_messages_sum") >= points
        assert value(found, "computemesh_ingest_lag_seconds_count") >= 1
        for task, queue in ((task_names.MATCH_JOB, "default"), (task_names.DISPATCH_ASSIGNMENT, "dispatch"),
                            ("workers.tasks_verify.verify_attempt", "verify"),
                            (task_names.SETTLE_PENDING, "chain")):
            assert value(found, "computemesh_celery_task_duration_seconds_count", task=task,
                         state="SUCCESS") >= 1, task
            assert value(found, "computemesh_celery_task_queue_wait_seconds_count", queue=queue) >= 1, queue
            assert value(found, "computemesh_celery_queue_depth", queue=queue) >= 0
        assert value(found, "computemesh_jobs", status="settled") == 1
        assert sum(v for (n, _), v in found.items() if n == "computemesh_jobs") == Job.objects.count()
        assert value(found, "computemesh_chain_oldest_pending_seconds") == 0
        operator = deploy.operator_address()
        assert value(found, "computemesh_chain_nonce_lag", sender=operator) == 0  # every nonce mined
        assert value(found, "computemesh_chain_rpc_up") == 1

        # Every series the Grafana dashboard plots is exposed; every one exposed is documented.
        dashboard = (ROOT / "docs" / "grafana-dashboard.json").read_text()
        plotted = set(re.findall(r"computemesh_\w+", dashboard))
        assert plotted and plotted <= exposed, plotted - exposed
        assert {family(n) for n in exposed} <= documented_metrics(), {family(n) for n in exposed}
        # The worker serves the same files itself (for a worker in a container of its own).
        from_worker = samples(get(f"http://127.0.0.1:{worker_port}/metrics")[1].decode())
        assert value(from_worker, "computemesh_celery_task_duration_seconds_count",
                     task=task_names.SETTLE_PENDING, state="SUCCESS") >= 1

        # A queue nobody consumes any more: its depth grows.
        stack.procs["celery"].terminate()
        stack.procs["celery"].wait(timeout=60)
        from webapp.celery import app

        with app.connection_for_write(stack.redis_url) as conn:
            app.send_task("workers.tasks.nothing_consumes_this", queue="dispatch", connection=conn)
        assert value(scrape(), "computemesh_celery_queue_depth", queue="dispatch") == 1
    finally:
        if viewer is not None:
            viewer.stop()
        stack.stop()

    # JSON logs: every line of the web server's and the worker's logs is one JSON object; the
    # request's id and its job's id are on the record of its 404 (a job URL); the worker's
    # records of a task on the job carry the task's id and the job's.
    records = {}
    for name in ("daphne", "celery"):
        lines = [x for x in (stack.logs / f"{name}.log").read_text().splitlines() if x.startswith("{")]
        assert lines, f"no JSON lines in {name}.log"
        records[name] = [json.loads(line) for line in lines]
    probe = {r["logger"]: r for r in records["daphne"] if r.get("request_id") == "probe-42"}
    assert probe["django.request"]["job_id"] == 987654, probe
    # One access record per request, with its ids, route pattern, status and duration.
    assert {k: probe["computemesh.access"][k] for k in ("job_id", "method", "route", "status")} == \
        {"job_id": 987654, "method": "GET", "route": "/api/v1/jobs/<pk>/", "status": 401}, probe
    assert probe["computemesh.access"]["duration_ms"] >= 0
    created = [r for r in records["daphne"] if r["logger"] == "computemesh.access" and r["method"] == "POST"
               and r["route"] == "/api/v1/jobs/"]
    assert len(created) == 1 and created[0]["status"] == 201 and created[0]["request_id"], created
    on_job = [r for r in records["celery"] if r.get("job_id") == job["id"] and r.get("task_id")]
    assert on_job, [r for r in records["celery"] if r.get("task_id")][-5:]


def family(series: str) -> str:
    """A sample's metric family: computemesh_x_bucket, _count, _sum and _total are computemesh_x."""
    return re.sub(r"_(bucket|count|sum|total)$", "", series)


def documented_metrics() -> set[str]:
    """The metric families docs/operations.md's table describes (each row's first cell)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    rows = re.findall(r"^\| (`computemesh_.*?) \|", text, re.MULTILINE)
    return {family(n) for row in rows for n in re.findall(r"`(computemesh_\w+)", row)}


def test_the_grafana_dashboard_is_valid_and_plots_every_documented_metric():
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    assert [v["name"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"] == ["datasource"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids repeat"
    cells = set()
    plotted = set()
    for panel in panels:
        box = panel["gridPos"]
        assert 0 <= box["x"] and box["x"] + box["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(box["x"], box["x"] + box["w"])
                for y in range(box["y"], box["y"] + box["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:  # the platform's metrics, or HAProxy's (tests/test_web_scale_out.py)
            assert re.search(r"\b(computemesh|haproxy)_\w+", target["expr"]), (panel["title"], target)
            plotted |= {family(n) for n in re.findall(r"computemesh_\w+", target["expr"])}
    documented = documented_metrics()
    assert len(documented) >= 20, documented
    assert plotted == documented, {"not documented": plotted - documented,
                                   "not plotted": documented - plotted}


def test_json_log_lines_carry_the_bound_ids_and_leave_unbound_ones_out():
    # In a context of its own: a request served in this process earlier left its id bound.
    plain, bound = contextvars.Context().run(_json_log_lines)
    assert plain["message"] == "hello there" and plain["level"] == "INFO" and plain["time"].endswith("+00:00")
    assert not {"request_id", "job_id", "task_id"} & set(plain), plain  # no nulls
    assert (bound["request_id"], bound["job_id"], bound["bytes"]) == ("req-7", 42, 3)
    assert "task_id" not in bound


def _json_log_lines() -> tuple[dict, dict]:
    """Two records through the JSON formatter: one with nothing bound, one with a request id
    bound and a job id passed in `extra`."""
    from marketplace import logs

    formatter, context = logs.JsonFormatter(), logs.ContextFilter()

    def line(**extra) -> dict:
        record = logging.LogRecord("computemesh.test", logging.INFO, __file__, 1, "hello %s", ("there",),
                                   None)
        record.__dict__.update(extra)
        assert context.filter(record)
        return json.loads(formatter.format(record))

    plain = line()
    token = logs.request_id_var.set("req-7")
    try:
        bound = line(job_id=42, bytes=3)
    finally:
        logs.request_id_var.reset(token)
    return plain, bound


def test_compose_checks_readiness_and_gives_each_container_its_metrics_folder():
    import yaml

    from .browser_support import ROOT

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    for name in ("web", "worker", "verify-worker", "chain-worker", "beat"):
        env = services[name]["environment"]
        assert env["PROMETHEUS_MULTIPROC_DIR"] in services[name]["tmpfs"], name  # emptied on restart
    for name in ("worker", "verify-worker", "chain-worker"):  # no /metrics of their own otherwise
        port = services[name]["environment"]["METRICS_PORT"]
        assert f":{port}/metrics" in " ".join(services[name]["healthcheck"]["test"]), name
