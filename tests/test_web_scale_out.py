"""Two web processes behind HAProxy (deploy/haproxy.cfg), as production scales the web tier:
a real agent on one process and a job page's socket on the other, a real job; progress and
status cross from one process to the other through the Redis channel layer. Then each process
is killed in turn: the agent and the viewer reconnect through the balancer to the survivor,
and the viewer ends with every progress point of the job (resync by sequence number).

The job is made far longer than the test (small batches, a wide network) and its owner cancels
it once both kills are survived: how long a job takes depends on the machine, and one that
finished before a kill would prove nothing (CI's faster machine once reached `verifying`)."""

import asyncio
import json
import re
import signal
import threading
import urllib.request
from pathlib import Path

import pytest
import websockets
from django.test import Client
from rest_framework.authtoken.models import Token

from marketplace.models import Job, Organization
from marketplace.services.accounts import organization_create

from .balancer import HAPROXY, HAProxy
from .browser_support import free_port
from .factories import UserFactory
from .stack import Stack, wait_for
from .test_execution_e2e import cpu_nodes, job_body

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration,
              pytest.mark.skipif(not Path(HAPROXY).exists(), reason="needs haproxy (make test installs it)")]


class Viewer:
    """What the job page's script does (static/js/job_live.js), in a thread: open the job's
    socket, ask for what it has not seen (`resync` after the last sequence number), keep
    every update, reconnect whenever the socket drops."""

    def __init__(self, url: str, cookie: str, origin: str):
        self.url, self.headers = url, {"Cookie": cookie, "Origin": origin}
        self.seqs: set[int] = set()
        self.statuses: list[str] = []
        self.connects = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> "Viewer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def status(self) -> str | None:
        with self.lock:
            return self.statuses[-1] if self.statuses else None

    def _keep(self, message: dict) -> None:
        with self.lock:
            for p in message.get("metrics", []) if message["type"] == "history" else []:
                self.seqs.add(p["seq"])
            if message["type"] == "metrics":
                self.seqs.update(p["seq"] for p in message["points"])
            job = message.get("job")
            if job and (not self.statuses or self.statuses[-1] != job["status"]):
                self.statuses.append(job["status"])

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                async with websockets.connect(self.url, additional_headers=self.headers,
                                              open_timeout=5) as ws:
                    with self.lock:
                        self.connects += 1
                        after = max(self.seqs, default=0)
                    await ws.send(json.dumps({"type": "resync", "after_seq": after, "after_log_seq": 0}))
                    while not self._stop.is_set():
                        try:
                            self._keep(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
                        except TimeoutError:
                            continue
            except (OSError, websockets.WebSocketException, TimeoutError):
                await asyncio.sleep(0.3)  # the page's script waits a little too


@pytest.fixture
def tier(tmp_path):
    """The stack's daphne (web1), a second one (web2), HAProxy in front of both."""
    stack = Stack(tmp_path)
    ports = {"web1": stack.port, "web2": free_port()}
    balancer = HAProxy(tmp_path, ports, logs=stack.logs)
    try:
        stack.start()
        stack.procs["web1"] = stack.procs.pop("daphne")
        stack.daphne("web2", ports["web2"])
        balancer.start()
        # Killing a web process on purpose: its clients see the connection drop and reconnect.
        stack.allow(r"(?i)connection (lost|closed)|reconnecting", why="a web process is killed")
        # At the end the balancer goes first, then the web processes: one stopped while it
        # still unsubscribes a closed socket's channel has channels_redis log its cancelled
        # cleanup as an ERROR (seen in CI's clean clone); a stop, not a fault of the platform.
        stack.allow(r"(?s)channels_redis\.pubsub: Unexpected exception while cleaning-up "
                    r"channel.*CancelledError", why="a web process stopped while it cleans up a socket")
        yield stack, balancer, ports
    finally:
        balancer.stop()
        stack.stop()


def test_agents_and_viewers_spread_over_processes_and_survive_losing_one(tier):
    stack, balancer, ports = tier
    org = organization_create(name="Medisight", kind=Organization.Kind.CONSUMER, sector="healthcare")
    alice = UserFactory(username="alice", organization=org)
    token = Token.objects.create(user=alice).key
    browser = Client()
    browser.force_login(alice)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"

    (node_token,) = cpu_nodes(1)
    stack.agent("agent", node_token, server=balancer.base)
    on = wait_for(lambda: [n for n, c in balancer.sessions().items() if c == 1], timeout=30,
                  what="the agent's socket through the balancer")
    agent_on = on[0]
    viewer_on = "web2" if agent_on == "web1" else "web1"

    code, job = stack.http("POST", "/api/v1/jobs/", token=token, body=job_body(
        params={"epochs": 200, "batch_size": 8, "hidden_units": 512, "hidden_layers": 4}))
    assert code == 201, job
    viewer = Viewer(f"ws://127.0.0.1:{balancer.port}/ws/jobs/{job['id']}/", cookie,
                    f"http://127.0.0.1:{balancer.port}").start()
    try:
        # leastconn: the viewer's socket goes to the process without the agent.
        wait_for(lambda: balancer.sessions() == {agent_on: 1, viewer_on: 1}, timeout=20,
                 what="the agent and the viewer on different processes")
        # Progress from the agent's process reaches the viewer on the other.
        wait_for(lambda: viewer.status == "running" and len(viewer.seqs) >= 3, timeout=120,
                 what="progress at the viewer")

        # The agent's process dies: the agent reconnects to the other, progress goes on.
        running_at_kills = [viewer.status]
        stack.kill(agent_on, signal.SIGKILL)
        seen = len(viewer.seqs)
        stack.daphne(f"{agent_on}-again", ports[agent_on], wait=False)  # it comes back meanwhile
        wait_for(lambda: balancer.sessions().get(viewer_on) == 2, timeout=30,
                 what="the agent back through the balancer")
        wait_for(lambda: len(viewer.seqs) > seen + 2, timeout=60, what="progress after the first kill")

        # Then the other one dies, taking the agent and the viewer with it.
        wait_for(lambda: agent_on in balancer.up(), timeout=20, what="the restarted process in service")
        connects = viewer.connects
        running_at_kills.append(viewer.status)
        stack.kill(viewer_on, signal.SIGKILL)
        wait_for(lambda: balancer.sessions().get(agent_on) == 2 and viewer.connects > connects,
                 timeout=30, what="the agent and the viewer back on the restarted process")

        seen = len(viewer.seqs)
        wait_for(lambda: len(viewer.seqs) > seen + 2, timeout=60, what="progress after the second kill")
        running_at_kills.append(viewer.status)

        # The owner stops it: the status change reaches the viewer, and so does every point stored.
        code, cancelled = stack.http("POST", f"/api/v1/jobs/{job['id']}/cancel/", token=token)
        assert code == 200 and cancelled["status"] == "cancelled", cancelled
        wait_for(lambda: "cancelled" in viewer.statuses, timeout=30,
                 what="the viewer to see the job cancelled")
        metrics = Job.objects.get(pk=job["id"]).metrics

        def all_seen() -> bool:
            stored = set(metrics.values_list("seq", flat=True))
            return viewer.seqs == stored

        wait_for(all_seen, timeout=20, what="every progress point at the viewer")
        assert viewer.connects >= 2  # the first, and one after the second kill
        assert running_at_kills == ["running"] * 3, running_at_kills
    finally:
        viewer.stop()


def test_the_balancer_exports_each_web_process_state_for_prometheus(tmp_path):
    """deploy/haproxy.cfg's exporter: the state of each web process, the sessions it holds
    and the responses it gave, from HAProxy itself (a process it marks down shows there
    before any scrape of that process fails)."""
    from .browser_support import ROOT, daphne_process
    from .test_operations import samples, value

    with daphne_process(logs="balancer-exporter") as (base, _pid):
        port = int(base.rsplit(":", 1)[1])
        balancer = HAProxy(tmp_path, {"web1": port, "web2": free_port()}, logs=tmp_path)  # web2: no one
        try:
            balancer.start(up={"web1"})
            for _ in range(3):
                with urllib.request.urlopen(balancer.base + "/healthz", timeout=10) as r:
                    assert r.status == 200
            # The balancer names each request (the id on the web process's log records) unless
            # a proxy in front of it did.
            with urllib.request.urlopen(balancer.base + "/api/v1/templates/", timeout=10) as r:
                assert re.fullmatch(r"[0-9A-F]{8}(-[0-9A-F]+){5}", r.headers["X-Request-ID"]), r.headers
            given = urllib.request.Request(balancer.base + "/api/v1/templates/",
                                           headers={"X-Request-ID": "tls-7"})
            with urllib.request.urlopen(given, timeout=10) as r:
                assert r.headers["X-Request-ID"] == "tls-7"

            def scrape() -> dict | None:
                url = f"http://127.0.0.1:{balancer.metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=10) as r:
                    found = samples(r.read().decode())
                return found if value(found, "haproxy_server_status", server="web2", state="DOWN") else None

            found = wait_for(scrape, timeout=30, what="web2 to be marked down")  # 3 failed checks
        finally:
            balancer.stop()
    assert value(found, "haproxy_server_status", proxy="web", server="web1", state="UP") == 1
    assert value(found, "haproxy_server_status", proxy="web", server="web2", state="DOWN") == 1
    assert value(found, "haproxy_backend_active_servers", proxy="web") == 1
    assert value(found, "haproxy_server_http_responses_total", proxy="web", server="web1", code="2xx") >= 5
    assert value(found, "haproxy_server_current_sessions", proxy="web", server="web2") == 0
    # The Grafana dashboard plots only what the exporter gives.
    plotted = set(re.findall(r"haproxy_\w+", (ROOT / "docs" / "grafana-dashboard.json").read_text()))
    assert plotted and plotted <= {n for n, _ in found}, plotted - {n for n, _ in found}


def test_compose_puts_the_balancer_in_front_of_the_web_replicas():
    import subprocess

    import yaml

    from .browser_support import ROOT

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    balancer = services["balancer"]
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in balancer["volumes"]
    assert balancer["ports"] == ["${WEB_PORT:-8000}:8080"]  # the exporter's port is not published
    assert "ports" not in services["web"]  # replicas are reached through the balancer only
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert balancer["expose"] == ["8405"] and "    bind *:8405" in config
    assert "option httpchk" in config and "uri /healthz" in config and "timeout tunnel" in config
    checked = subprocess.run([HAPROXY, "-c", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
