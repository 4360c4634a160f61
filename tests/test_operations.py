"""What operators ask the platform (webapp/ops.py): /healthz, /readyz, /metrics, JSON logs.

Real parts throughout: daphne, PostgreSQL reached through a TCP relay this test can cut (the
machine's PostgreSQL keeps running for everyone else), a Celery worker, an agent's socket."""

import asyncio
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.utils import timezone

from marketplace.models import Assignment, Job, Organization
from marketplace.services.accounts import organization_create
from marketplace.services.job_spec import JobSpec
from marketplace.services.jobs import job_submit
from marketplace.services.nodes import NodeSpec, node_create
from marketplace.services.offers import OfferSpec, offer_create

from .browser_support import daphne_process, free_port
from .stack import Stack, wait_for

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


def value(found: dict, name: str, **labels) -> float:
    want = set(labels.items())
    matching = [v for (n, ls), v in found.items() if n == name and want <= ls]
    assert matching, f"{name}{labels} not exposed; exposed: {sorted({n for n, _ in found})}"
    return sum(matching)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_metrics_after_activity_and_json_logs_with_request_and_job_ids(tmp_path):
    provider = organization_create(name="Metrics provider", kind=Organization.Kind.PROVIDER)
    consumer = organization_create(name="Metrics consumer", kind=Organization.Kind.CONSUMER)
    node, node_token = node_create(provider=provider, spec=NodeSpec(
        name="metrics-cpu", gpu_model="cpu", gpu_count=2, gpu_memory_gb=None, cpu_cores=2, ram_gb=4,
        disk_gb=10, region="EU-DE"))
    offer = offer_create(provider=provider, node=node, spec=OfferSpec(
        gpus_offered=2, price_per_gpu_hour=Decimal("0.01")))
    job = job_submit(owner=consumer, spec=JobSpec(
        name="metrics", template="tabular-classifier", dataset="sample:breast-cancer", nodes=1,
        gpus_per_node=1, gpu_models=("cpu",), max_price_per_gpu_hour=Decimal("1"), budget=Decimal("10"),
        deadline=timezone.now() + timedelta(days=1)))
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    assignment = Assignment.objects.create(job=job, node=node, offer=offer, attempt=1, node_rank=0, gpus=1,
                                           price_per_gpu_hour=Decimal("0.01"),
                                           status=Assignment.Status.RUNNING, started_at=timezone.now())

    stack = Stack(tmp_path, heartbeat_timeout_s=30)
    worker_port = free_port()
    stack.env.update(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"), METRICS_TOKEN=TOKEN,
                     LOG_FORMAT="json", METRICS_PORT=str(worker_port), METRICS_ADDR="127.0.0.1")
    (tmp_path / "prometheus").mkdir()
    stack.start()
    try:
        for _ in range(5):
            assert get(stack.base + "/api/v1/templates/")[0] == 200
        status, _, headers = get(stack.base + "/api/v1/jobs/987654/", {"X-Request-ID": "probe-42"})
        assert status in (401, 403, 404) and headers.get("X-Request-ID") == "probe-42"
        # A task on a queue no worker here consumes: its depth must show.
        from webapp.celery import app

        with app.connection_for_write(stack.redis_url) as conn:
            app.send_task("workers.tasks.nothing_consumes_this", queue="chain", connection=conn)

        async def agent_session() -> dict:
            import websockets

            ws_base = stack.base.replace("http", "ws")
            async with websockets.connect(f"{ws_base}/ws/agent/", origin=stack.base,
                                          additional_headers={"Authorization": f"Token {node_token}"}) as ws:
                for seq in range(1, 11):
                    await ws.send(json.dumps({
                        "type": "progress", "id": f"p{seq}", "assignment": assignment.pk, "seq": seq,
                        "items": [{"step": seq, "total_steps": 100, "loss": 1.0 / seq,
                                   "samples_per_sec": 10.0, "at": time.time()}]}))
                await ws.send(json.dumps({"type": "heartbeat", "id": "h1", "running": [assignment.pk]}))
                acked = set()
                while len(acked) < 10:
                    m = json.loads(await asyncio.wait_for(ws.recv(), timeout=20))
                    if m.get("type") == "ack":
                        acked.update(m.get("ids") or [m.get("ack")])
                # Scraped while the socket is open (from a thread: urllib blocks).
                return samples((await asyncio.to_thread(
                    get, stack.base + "/metrics", {"Authorization": f"Bearer {TOKEN}"}))[1].decode())

        during = asyncio.run(agent_session())
        assert value(during, "computemesh_websocket_connections", kind="agent") == 1
        assert value(during, "computemesh_agents_connected") == 1
        assert 0 <= value(during, "computemesh_agent_heartbeat_lag_seconds", which="max") < 30
        assert value(during, "computemesh_ingest_batch_messages_count") >= 1
        assert value(during, "computemesh_ingest_batch_messages_sum") == 10
        assert value(during, "computemesh_ingest_lag_seconds_count") >= 1

        # The worker's tasks (beat's periodic ones at least) are timed, in its own processes.
        def after() -> dict:
            found = samples(get(stack.base + "/metrics", {"Authorization": f"Bearer {TOKEN}"})[1].decode())
            ran = [v for (n, ls), v in found.items()
                   if n == "computemesh_celery_task_duration_seconds_count" and ("state", "SUCCESS") in ls]
            waited = [v for (n, ls), v in found.items()
                      if n == "computemesh_celery_task_queue_wait_seconds_count"
                      and ("queue", "default") in ls]
            return found if sum(ran) >= 1 and sum(waited) >= 1 else None

        found = wait_for(after, timeout=60, what="a Celery task timed by the worker")
        assert value(found, "computemesh_websocket_connections", kind="agent") == 0  # closed
        assert value(found, "computemesh_websocket_connects_total", kind="agent", outcome="accepted") == 1
        assert value(found, "computemesh_http_request_duration_seconds_count",
                     route="/api/v1/templates/", method="GET", status="2xx") >= 5
        assert value(found, "computemesh_http_request_duration_seconds_count",
                     route="/api/v1/jobs/<pk>/", method="GET") >= 1
        assert value(found, "computemesh_jobs", status="running") == 1
        assert sum(v for (n, _), v in found.items() if n == "computemesh_jobs") == Job.objects.count()
        assert value(found, "computemesh_celery_queue_depth", queue="chain") >= 1
        assert value(found, "computemesh_celery_queue_depth", queue="default") >= 0
        assert value(found, "computemesh_chain_pending_transactions", status="sent") == 0
        assert value(found, "computemesh_chain_oldest_pending_seconds") == 0
        # Every series the Grafana dashboard plots is exposed (the two chain-node ones need
        # the escrow on and a JSON-RPC node).
        from .browser_support import ROOT

        dashboard = (ROOT / "docs" / "grafana-dashboard.json").read_text()
        plotted = set(re.findall(r"computemesh_\w+", dashboard)) - {"computemesh_chain_nonce_lag",
                                                                    "computemesh_chain_rpc_up"}
        assert plotted and plotted <= {n for n, _ in found}, plotted - {n for n, _ in found}
        # The worker serves the same files itself (for a worker in a container of its own).
        from_worker = samples(get(f"http://127.0.0.1:{worker_port}/metrics")[1].decode())
        assert value(from_worker, "computemesh_celery_task_duration_seconds_count", state="SUCCESS") >= 1
    finally:
        stack.stop()

    # JSON logs: every line of the web server's and the worker's logs is one JSON object; the
    # request's id and its job's id are on the record of its 404 (a job URL).
    records = {}
    for name in ("daphne", "celery"):
        lines = [x for x in (stack.logs / f"{name}.log").read_text().splitlines() if x.startswith("{")]
        assert lines, f"no JSON lines in {name}.log"
        records[name] = [json.loads(line) for line in lines]
    probe = [r for r in records["daphne"] if r.get("request_id") == "probe-42"]
    assert probe, records["daphne"]
    assert probe[0]["job_id"] == 987654 and probe[0]["logger"] == "django.request", probe
    assert any(r.get("task_id") for r in records["celery"]), records["celery"][-5:]


def test_compose_checks_readiness_and_gives_each_container_its_metrics_folder():
    import yaml

    from .browser_support import ROOT

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    for name in ("web", "worker", "chain-worker", "beat"):
        env = services[name]["environment"]
        assert env["PROMETHEUS_MULTIPROC_DIR"] in services[name]["tmpfs"], name  # emptied on restart
    for name in ("worker", "chain-worker"):  # workers have no /metrics of their own otherwise
        port = services[name]["environment"]["METRICS_PORT"]
        assert f":{port}/metrics" in " ".join(services[name]["healthcheck"]["test"]), name
