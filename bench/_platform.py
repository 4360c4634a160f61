"""The real platform as processes for the execution benchmarks: daphne, a Celery worker
with beat, and local CPU agents, on a benchmark database of their own."""

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

from _common import ROOT, configure_django

# Defaults: DATABASE_URL and REDIS_URL in the environment win (the smoke runs in
# tests/test_bench_smoke.py give a database and a Redis server of their own).
DB_URL = "postgres://postgres@127.0.0.1:5432/computemesh_bench_exec"
REDIS_URL = "redis://127.0.0.1:6379/13"
# Every queue a job passes through: without `verify` each finished job waited in
# `verifying` for ever and the execution benchmarks hung (webapp/celery.py routes them;
# `chain` only matters with the escrow on, which the benchmarks turn off).
QUEUES = "default,dispatch,verify"


def setup_django() -> None:
    os.environ.setdefault("REDIS_URL", REDIS_URL)
    os.environ.setdefault("ESCROW_ENABLED", "0")
    configure_django(DB_URL)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def reset(nodes: int, slots: int = 2) -> tuple[list[str], object]:
    """Empty the execution tables and register `nodes` local CPU nodes; returns their
    agent tokens and a consumer organization."""
    from django.db import connection

    from marketplace.models import Organization
    from marketplace.services.accounts import organization_create
    from marketplace.services.nodes import NodeSpec, node_create
    from marketplace.services.offers import OfferSpec, offer_create

    with connection.cursor() as cur:
        cur.execute("TRUNCATE marketplace_organization, auth_user CASCADE")
    provider = organization_create(name="Bench CPU provider", kind=Organization.Kind.PROVIDER)
    consumer = organization_create(name="Bench consumer", kind=Organization.Kind.CONSUMER)
    tokens = []
    for i in range(nodes):
        node, token = node_create(provider=provider, spec=NodeSpec(
            name=f"bench-cpu-{i}", gpu_model="cpu", gpu_count=slots, gpu_memory_gb=None,
            cpu_cores=os.cpu_count() or 1, ram_gb=4, disk_gb=10, region="EU-DE"))
        offer_create(provider=provider, node=node,
                     spec=OfferSpec(gpus_offered=slots, price_per_gpu_hour=Decimal("0.01")))
        tokens.append(token)
    return tokens, consumer


class Platform:
    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="cm-bench-"))
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # What setup_django configured this process with (an environment override wins).
        self.env = {**os.environ, "DATABASE_URL": os.environ.get("DATABASE_URL", DB_URL),
                    "REDIS_URL": os.environ.get("REDIS_URL", REDIS_URL),
                    "DJANGO_SETTINGS_MODULE": "webapp.settings", "ESCROW_ENABLED": "0",
                    "AGENT_HEARTBEAT_S": "1", "MEDIA_ROOT": str(self.tmp / "media"),
                    "PYTHONUNBUFFERED": "1"}
        self.procs: list[subprocess.Popen] = []

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self, tokens: list[str]) -> "Platform":
        import redis

        redis.Redis.from_url(self.env["REDIS_URL"]).flushdb()
        self._spawn("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                               "webapp.asgi:application"])
        self._spawn("celery", [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-B",
                               "-Q", QUEUES, "--concurrency", "2", "--loglevel", "WARNING",
                               "--schedule", str(self.tmp / "beat")])
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.base + "/api/v1/templates/", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"daphne did not start; see {self.tmp}/daphne.log") from None
                time.sleep(0.3)
        for i, token in enumerate(tokens):
            self._spawn(f"agent-{i}", [sys.executable, "-m", "workers.agent", "--server", self.base,
                                       "--token", token, "--workdir", str(self.tmp / f"agent-{i}"),
                                       "--plain", "--heartbeat", "1", "--advertise-addr", "127.0.0.1"])
        self._wait_online(len(tokens))
        return self

    def _wait_online(self, count: int) -> None:
        from marketplace.models import Node

        deadline = time.monotonic() + 90
        while Node.objects.filter(status=Node.Status.ONLINE).count() < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"agents did not come online; see {self.tmp}")
            time.sleep(0.5)

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_torchrun(spec: dict, *, nproc: int, workdir: Path) -> list[dict]:
    """Run the same training with bare `torchrun --standalone`; returns its events with
    the wall-clock launch time as the first entry's `launched_at`."""
    import json

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "events.jsonl").unlink(missing_ok=True)
    spec = {**spec, "workdir": str(workdir)}
    (workdir / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc)),
           "PYTHONPATH": str(ROOT)}
    launched = time.time()
    with open(workdir / "torchrun.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nproc-per-node", str(nproc), "-m", "workers.training.run",
                               str(workdir / "spec.json")], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"bare torchrun failed ({done.returncode}); see {workdir}/torchrun.log")
    events = [json.loads(line) for line in (workdir / "events.jsonl").read_text().splitlines()]
    return [{"launched_at": launched}, *events]
