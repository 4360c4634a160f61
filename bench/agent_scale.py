"""How many agents the control plane holds: N simulated agents speaking the real protocol
(hello with their node's token, a heartbeat every AGENT_HEARTBEAT_S with a random phase, a
share of them streaming progress for a running assignment once a second) from separate
client processes, against the production shape: daphne (1 or 2 processes) behind HAProxy
(deploy/haproxy.cfg), the Redis channel layer, PostgreSQL, and a Celery worker with beat
running the heartbeat watchdog.

    .venv/bin/python bench/agent_scale.py [--agents 1000,2000,5000] [--web 1,2] [--seconds 30]
    .venv/bin/python bench/agent_scale.py --smoke     # what `make test` runs: 20 agents, seconds

For each number of web processes and each N it reports: connect success (the socket opened
and `welcome` answered the hello), the heartbeat round trip (a heartbeat to its
`heartbeat.ack`) p50/p99 over the measuring window, sockets dropped, false offline
transitions (the watchdog took a node offline whose agent was connected and heartbeating),
and the web processes' CPU (cores busy) and memory (RSS) per 1,000 agents. The baseline, in
the same run and against the same server processes: the same clients on a trivial echo
socket (/ws/echo/, bench/_scale_asgi.py), which answers every frame at once.

Nodes and their tokens are bulk-created in the database (no API round trips). The bench runs
its own redis-server (the channel layer's pub/sub channels span databases: a shared server
would mix other platforms' messages in) unless REDIS_URL is set. HAProxy needs two file
descriptors a socket: the bench raises `ulimit -n` for the processes it starts to what the
largest N needs (the hard limit too where it may: as root); it prints the limit it got.
"""

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, configure_django, machine, percentile, report, table  # noqa: E402

DB_URL = "postgres://postgres@127.0.0.1:5432/computemesh_bench_scale"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CLIENT_PROCESSES = 4
CONNECTS_PER_S = 100  # all client processes together (--connect-rate)
PROGRESS_EVERY_S = 1.0
OPEN_S, WELCOME_S = 30.0, 60.0  # the socket opened within OPEN_S, `welcome` within WELCOME_S more


# --- the client processes (no Django here) --------------------------------------------
def client_process(url: str, origin: str, agents: list, heartbeat_s: float, connects_per_s: float,
                   control, results) -> None:
    """One client process: `agents` are (node id, token, assignment id or None)."""
    results.put(asyncio.run(_client(url, origin, agents, heartbeat_s, connects_per_s, control)))


async def _client(url, origin, agents, heartbeat_s, connects_per_s, control) -> dict:
    import websockets

    loop = asyncio.get_running_loop()
    echo = url.endswith("/ws/echo/")
    rtts: list[tuple[float, float]] = []  # (sent at, round trip s)
    out = {"connected": 0, "failed": 0, "dropped": [], "welcomed": [], "errors": {}, "progress_acked": 0}
    stop = asyncio.Event()
    sockets = []

    async def agent(node_id: int, token: str, assignment: int | None, start_at: float) -> None:
        await asyncio.sleep(max(0.0, start_at - loop.time()))
        try:
            ws = await websockets.connect(url, origin=origin, open_timeout=OPEN_S, ping_interval=20,
                                          additional_headers={"Authorization": f"Token {token}"},
                                          max_size=8 * 1024 * 1024)
        except Exception as exc:  # refused, timed out, reset: a failed connect either way
            out["failed"] += 1
            key = f"{type(exc).__name__}: {str(exc)[:80]}"
            out["errors"][key] = out["errors"].get(key, 0) + 1
            return
        sockets.append(ws)
        pending: dict[str, float] = {}
        welcomed = asyncio.Event()
        step = 0
        try:
            hello_by = loop.time() + WELCOME_S
            if not echo:
                # Within the welcome's deadline: a server that stops reading blocks a send.
                await asyncio.wait_for(ws.send(json.dumps({
                    "type": "hello", "id": uuid.uuid4().hex, "agent_version": "bench",
                    "hardware": {"cpu_cores": 2, "ram_gb": 8, "disk_gb": 20},
                    "running": [assignment] if assignment else [], "unacked": [], "faults": {}})), WELCOME_S)
            else:
                welcomed.set()

            async def reader():
                try:
                    await read()
                except websockets.ConnectionClosed:
                    pass  # counted as dropped below (unless the bench was stopping)

            async def read():
                async for raw in ws:
                    message = json.loads(raw)
                    kind = message.get("type")
                    if kind == "welcome":
                        welcomed.set()
                    elif kind == "heartbeat.ack" and message.get("ref") in pending:
                        sent = pending.pop(message["ref"])
                        rtts.append((sent, loop.time() - sent))
                    elif kind == "ack":
                        out["progress_acked"] += len(message.get("ids", []))
                    elif kind == "error":
                        key = f"error:{message.get('code')}"
                        out["errors"][key] = out["errors"].get(key, 0) + 1

            reading = asyncio.create_task(reader())
            await asyncio.wait_for(welcomed.wait(), max(0.0, hello_by - loop.time()))
            out["connected"] += 1
            out["welcomed"].append(node_id)
            next_beat = loop.time() + random.uniform(0, heartbeat_s)
            next_progress = loop.time() + random.uniform(0, PROGRESS_EVERY_S)
            while not stop.is_set() and not reading.done():
                now = loop.time()
                if now >= next_beat:
                    ref = uuid.uuid4().hex
                    pending[ref] = now
                    await ws.send(json.dumps({"type": "heartbeat", "id": ref, "ack": True,
                                              "running": [assignment] if assignment else [], "unacked": [],
                                              "steps": {str(assignment): step} if assignment else {}}))
                    next_beat += heartbeat_s
                if assignment and now >= next_progress:
                    step += 1
                    await ws.send(json.dumps({"type": "progress", "id": uuid.uuid4().hex,
                                              "assignment": assignment, "seq": step, "items": [{
                                                  "step": step, "total_steps": 10**6, "epoch": 0, "loss": 1.0,
                                                  "samples_per_sec": 100.0, "at": time.time()}]}))
                    next_progress += PROGRESS_EVERY_S
                wake = min(next_beat, next_progress if assignment else next_beat) - loop.time()
                try:
                    await asyncio.wait_for(stop.wait(), max(0.0, wake))
                except TimeoutError:
                    pass
            if reading.done() and not stop.is_set():
                out["dropped"].append(node_id)
            reading.cancel()
        except Exception as exc:
            if not welcomed.is_set():
                out["failed"] += 1
            elif not stop.is_set():
                out["dropped"].append(node_id)
            key = type(exc).__name__
            out["errors"][key] = out["errors"].get(key, 0) + 1

    total = len(agents)
    begin = loop.time() + 0.2
    tasks = [asyncio.create_task(agent(n, t, a, begin + i / connects_per_s))
             for i, (n, t, a) in enumerate(agents)]
    # Tell the bench when every agent is connected (or failed); it answers with the window.
    # An agent neither by its deadlines (a send the server never reads) counts as failed.
    give_up = begin + total / connects_per_s + OPEN_S + WELCOME_S + 10
    while out["connected"] + out["failed"] < total and not all(t.done() for t in tasks):
        if loop.time() > give_up:
            out["errors"]["stuck connecting"] = total - out["connected"] - out["failed"]
            out["failed"] = total - out["connected"]
            break
        await asyncio.sleep(0.2)
    control[1].put(("ready", out["connected"], out["failed"]))
    window = await loop.run_in_executor(None, control[0].get)  # (start, end) in time.time()
    offset = time.time() - loop.time()
    await asyncio.sleep(max(0.0, window[1] - time.time()))
    stop.set()
    # Agents blocked on a send the server no longer reads are cancelled, not waited for.
    _, stuck = await asyncio.wait(tasks, timeout=15)
    for task in stuck:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    closing = [asyncio.ensure_future(ws.close()) for ws in sockets]
    if closing:
        await asyncio.wait(closing, timeout=15)
    inside = [rtt for sent, rtt in rtts if window[0] <= sent + offset <= window[1] - 1.0]
    out["rtts"] = inside
    return out


# --- the server side ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Shape:
    """daphne × `web`, HAProxy in front, a Celery worker with beat, on `redis_url`."""

    def __init__(self, web: int, redis_url: str):
        self.tmp = Path(tempfile.mkdtemp(prefix="cm-scale-"))
        self.web, self.procs, self.named = web, [], {}
        self.redis_url = redis_url
        self.ports = [free_port() for _ in range(web)]
        self.port = free_port()
        self.env = {**os.environ, "REDIS_URL": self.redis_url, "DJANGO_SETTINGS_MODULE": "webapp.settings",
                    "ESCROW_ENABLED": "0", "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING",
                    "MEDIA_ROOT": str(self.tmp / "media"),
                    "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), str(ROOT)])}

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        self.named[name] = proc
        return proc

    def start(self) -> "Shape":
        import redis

        redis.Redis.from_url(self.redis_url).flushdb()
        for i, port in enumerate(self.ports):
            self._spawn(f"web{i + 1}", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                        "_scale_asgi:application"])
        self._spawn("celery", [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-B",
                               "-Q", "default,dispatch,verify", "--concurrency", "1", "--loglevel", "WARNING",
                               "--schedule", str(self.tmp / "beat")])
        for port in self.ports:
            self._wait(f"http://127.0.0.1:{port}/healthz")
        config = (ROOT / "deploy" / "haproxy.cfg").read_text()
        servers = "\n".join(f"    server web{i + 1} 127.0.0.1:{p} check" for i, p in enumerate(self.ports))
        config = re.sub(r"(?m)^    bind :\d+$", f"    bind 127.0.0.1:{self.port}", config)
        # HAProxy's exporter on a free port too: :8405 may be another run's.
        config = re.sub(r"(?m)^    bind \*:8405$", f"    bind 127.0.0.1:{free_port()}", config)
        config = re.sub(r"(?m)^    server-template .*$", servers, config)
        (self.tmp / "haproxy.cfg").write_text(config)
        self._spawn("haproxy", [HAPROXY, "-db", "-f", str(self.tmp / "haproxy.cfg")])
        self._wait(f"http://127.0.0.1:{self.port}/healthz")
        time.sleep(2.5)  # both servers through their first health checks
        self.idle_rss = sum(rss_mb(pid) for pid in self.pids("web"))
        return self

    def _wait(self, url: str) -> None:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{url} did not answer; see {self.tmp}") from None
                time.sleep(0.3)

    def pids(self, prefix: str) -> list[int]:
        return [p.pid for name, p in self.named.items() if name.startswith(prefix)]

    def stop(self) -> None:
        for proc in self.procs[::-1]:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def prepare(total: int, running_share: float) -> list[tuple[int, str, int | None]]:
    """`total` nodes with fresh tokens, bulk-created; a share of them with a running job.
    Returns (node id, token, running assignment id or None) for each."""
    from datetime import timedelta
    from decimal import Decimal

    from django.db import connection
    from django.utils import timezone

    from marketplace.models import Assignment, Job, Node, Organization
    from marketplace.services.accounts import organization_create
    from marketplace.services.job_spec import JobSpec
    from marketplace.services.jobs import job_submit
    from marketplace.services.nodes import NodeSpec, _new_token, node_create
    from marketplace.services.offers import OfferSpec, offer_create

    with connection.cursor() as cur:
        cur.execute("TRUNCATE marketplace_organization, auth_user CASCADE")
    provider = organization_create(name="Bench fleet", kind=Organization.Kind.PROVIDER)
    consumer = organization_create(name="Bench consumer", kind=Organization.Kind.CONSUMER)
    busy = max(1, round(total * running_share)) if running_share > 0 else 0
    agents: list[tuple[int, str, int | None]] = []
    for i in range(busy):  # through the services: an offer, a job and a running assignment each
        node, token = node_create(provider=provider, spec=NodeSpec(
            name=f"busy-{i}", gpu_model="cpu", gpu_count=2, gpu_memory_gb=None, cpu_cores=2, ram_gb=8,
            disk_gb=20, region="EU-DE"))
        offer = offer_create(provider=provider, node=node,
                             spec=OfferSpec(gpus_offered=2, price_per_gpu_hour=Decimal("0.01")))
        job = job_submit(owner=consumer, spec=JobSpec(
            name=f"scale-{i}", template="tabular-classifier", dataset="sample:breast-cancer", nodes=1,
            gpus_per_node=1, gpu_models=("cpu",), max_price_per_gpu_hour=Decimal("1"), budget=Decimal("10"),
            deadline=timezone.now() + timedelta(days=1)))
        Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
        assignment = Assignment.objects.create(
            job=job, node=node, offer=offer, attempt=1, node_rank=0, gpus=1,
            price_per_gpu_hour=Decimal("0.01"), status=Assignment.Status.RUNNING, started_at=timezone.now())
        agents.append((node.pk, token, assignment.pk))
    tokens, rows = [], []
    for i in range(total - busy):  # the idle majority: straight into the table
        token, token_hash, prefix = _new_token()
        tokens.append(token)
        rows.append(Node(provider=provider, name=f"idle-{i}", gpu_model="cpu", gpu_count=2, gpu_memory_gb=0,
                         cpu_cores=2, ram_gb=8, disk_gb=20, region="EU-DE", token_hash=token_hash,
                         token_prefix=prefix))
    for node, token in zip(Node.objects.bulk_create(rows, batch_size=2000), tokens, strict=True):
        agents.append((node.pk, token, None))
    random.Random(0).shuffle(agents)
    return agents


def run_clients(url: str, origin: str, agents: list, heartbeat_s: float, seconds: float,
                warmup: float, connect_rate: float) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs, controls = [], []
    n = min(CLIENT_PROCESSES, max(1, len(agents)))
    for i in range(n):
        control = (ctx.Queue(), ctx.Queue())
        share = agents[i::n]
        proc = ctx.Process(target=client_process, args=(url, origin, share, heartbeat_s, connect_rate / n,
                                                        control, results))
        proc.start()
        procs.append(proc)
        controls.append(control)
    began = time.time()
    ready = [c[1].get(timeout=600) for c in controls]
    connected_s = time.time() - began
    start = time.time() + warmup
    window = (start, start + seconds)
    for c in controls:
        c[0].put(window)
    time.sleep(max(0.0, start - time.time()))
    out = {"ready": ready, "connect_s": connected_s, "window": window}
    return out | {"gather": lambda: _gather(procs, results)}


def _gather(procs, results) -> dict:
    parts = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    merged = {"connected": 0, "failed": 0, "dropped": [], "welcomed": [], "errors": {}, "rtts": [],
              "progress_acked": 0}
    for part in parts:
        merged["connected"] += part["connected"]
        merged["failed"] += part["failed"]
        merged["dropped"] += part["dropped"]
        merged["welcomed"] += part["welcomed"]
        merged["rtts"] += part["rtts"]
        merged["progress_acked"] += part["progress_acked"]
        for k, v in part["errors"].items():
            merged["errors"][k] = merged["errors"].get(k, 0) + v
    return merged


def measure(shape: Shape, path: str, agents: list, *, heartbeat_s: float, seconds: float) -> dict:
    """One run of the clients on `path`: connect, a warm-up heartbeat interval, then the window."""
    url = f"ws://127.0.0.1:{shape.port}{path}"
    origin = f"http://127.0.0.1:{shape.port}"
    celery_log = shape.tmp / "celery.log"
    log_from = celery_log.stat().st_size if celery_log.exists() else 0
    load_before = os.getloadavg()[0]
    pending = run_clients(url, origin, agents, heartbeat_s, seconds, warmup=heartbeat_s,
                          connect_rate=CONNECTS_PER_S)
    webs = shape.pids("web")
    cpu0 = {pid: cpu_seconds(pid) for pid in webs + shape.pids("haproxy") + shape.pids("celery")}
    t0 = time.time()
    time.sleep(max(0.0, pending["window"][1] - time.time()))
    elapsed = time.time() - t0
    cpu = {pid: (cpu_seconds(pid) - c) / elapsed for pid, c in cpu0.items()}
    rss = sum(rss_mb(pid) for pid in webs)
    result = pending["gather"]()
    # The watchdog's "node N stopped heartbeating" lines during this run, for agents whose socket held.
    text = celery_log.read_text(errors="replace")[log_from:] if celery_log.exists() else ""
    lost = {int(m) for m in re.findall(r"node (\d+) stopped heartbeating", text)}
    held = set(result["welcomed"]) - set(result["dropped"])
    n = len(agents)
    rtts = result["rtts"]
    web_cpu = sum(cpu[p] for p in webs)
    return {
        "agents": n, "connected": result["connected"],
        "connect_failures": n - result["connected"],  # refused, timed out, or no welcome
        "connect_s": round(pending["connect_s"], 1), "dropped": len(result["dropped"]),
        "heartbeats": len(rtts),
        "rtt_p50_ms": round(percentile(rtts, 50) * 1000, 1) if rtts else None,
        "rtt_p99_ms": round(percentile(rtts, 99) * 1000, 1) if rtts else None,
        "rtt_max_ms": round(max(rtts) * 1000, 1) if rtts else None,
        "false_offline": len(lost & held), "progress_acked": result["progress_acked"],
        "errors": result["errors"],
        "web_cpu_cores": round(web_cpu, 2), "web_cpu_per_1k": round(web_cpu / n * 1000, 3),
        # What the sockets added to the processes' memory since they started idle.
        "web_rss_mb": round(rss), "web_rss_per_1k_mb": round(max(0.0, rss - shape.idle_rss) / n * 1000, 1),
        "haproxy_cpu": round(sum(cpu[p] for p in shape.pids("haproxy")), 2),
        "celery_cpu": round(sum(cpu[p] for p in shape.pids("celery")), 2),
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def offline_all() -> None:
    from marketplace.models import Node

    Node.objects.filter(status=Node.Status.ONLINE).update(status=Node.Status.OFFLINE)


def raise_fd_limit(agents: int) -> tuple[int, int]:
    """HAProxy holds two descriptors a socket and takes its maxconn from the limit it starts
    with (the server processes and clients one each): raise the limit the processes started
    here inherit to what `agents` need, the hard limit too where allowed (root). Returns it."""
    import resource

    want = 2 * agents + 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft, hard
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want, want
        except (ValueError, OSError):
            pass  # not allowed: as far as the hard limit goes
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def main() -> None:
    # Stopped with SIGTERM (timeout, kill): unwind, so that the servers it started stop too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="1000,2000,5000", help="comma-separated N")
    parser.add_argument("--web", default="1,2", help="comma-separated numbers of web processes")
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window per run")
    parser.add_argument("--heartbeat", type=float, default=None,
                        help="heartbeat interval (default: the platform's AGENT_HEARTBEAT_S, 5 s)")
    parser.add_argument("--running-share", type=float, default=0.02,
                        help="share of agents streaming progress for a running assignment (1 message/s)")
    parser.add_argument("--connect-rate", type=float, default=CONNECTS_PER_S,
                        help="new connections a second, all clients together")
    parser.add_argument("--no-echo", action="store_true", help="skip the echo baseline")
    parser.add_argument("--smoke", action="store_true", help="20 agents, 2 web processes, a few seconds")
    args = parser.parse_args()
    if args.smoke:
        args.agents, args.web, args.seconds, args.heartbeat = "20", "2", 3.0, 1.0
    own_redis = None
    if not os.environ.get("REDIS_URL"):  # before Django: the bench's own enqueues go there too
        port = free_port()
        own_redis = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
             "--maxclients", "20000", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, start_new_session=True)
        os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)
    try:
        run(args, os.environ["REDIS_URL"])
    finally:
        if own_redis is not None:
            own_redis.terminate()
            own_redis.wait(timeout=15)


def run(args, redis_url: str) -> None:
    global CONNECTS_PER_S
    CONNECTS_PER_S = args.connect_rate
    counts = [int(x) for x in args.agents.split(",")]
    webs = [int(x) for x in args.web.split(",")]
    fds = raise_fd_limit(max(counts))
    configure_django(DB_URL)
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    heartbeat_s = args.heartbeat or settings.AGENT_HEARTBEAT_S
    fleet = prepare(max(counts), args.running_share)
    print(f"{machine()}; load average {os.getloadavg()[0]:.2f}; heartbeat every {heartbeat_s:g} s, "
          f"watchdog timeout {settings.NODE_HEARTBEAT_TIMEOUT_S} s, window {args.seconds:g} s; "
          f"ulimit -n {fds[0]} (hard {fds[1]})", flush=True)
    runs = []
    for web in webs:
        shape = Shape(web, redis_url)
        if heartbeat_s != settings.AGENT_HEARTBEAT_S:
            shape.env["AGENT_HEARTBEAT_S"] = str(heartbeat_s)
        try:
            shape.start()
            for n in counts:
                # The busy agents (a running assignment each) are shuffled among the idle ones.
                agents = fleet[:n]
                row = {"web": web, "agents": n}
                if not args.no_echo:
                    row["echo"] = measure(shape, "/ws/echo/", agents, heartbeat_s=heartbeat_s,
                                          seconds=args.seconds)
                    print("echo", json.dumps(row["echo"]), flush=True)
                offline_all()
                row["platform"] = measure(shape, "/ws/agent/", agents, heartbeat_s=heartbeat_s,
                                          seconds=args.seconds)
                print("platform", json.dumps(row["platform"]), flush=True)
                offline_all()
                runs.append(row)
                time.sleep(2)
        finally:
            shape.stop()
    headers = ["web", "agents", "connected", "failed", "dropped", "p50 ms", "p99 ms", "false offline",
               "web CPU/1k", "RSS MB/1k", "echo p50", "echo p99", "echo CPU/1k", "load"]
    rows = []
    for r in runs:
        p, e = r["platform"], r.get("echo") or {}
        rows.append([r["web"], r["agents"], p["connected"], p["connect_failures"], p["dropped"],
                     p["rtt_p50_ms"], p["rtt_p99_ms"], p["false_offline"], p["web_cpu_per_1k"],
                     p["web_rss_per_1k_mb"],
                     e.get("rtt_p50_ms"), e.get("rtt_p99_ms"), e.get("web_cpu_per_1k"), p["load"][1]])
    print(table(headers, rows))
    report("agent_scale", smoke=args.smoke,
           figures={f"{r['web']} web, {r['agents']} agents": r["platform"] for r in runs},
           baseline={f"{r['web']} web, {r['agents']} agents": {k: r["echo"][k] for k in (
               "rtt_p50_ms", "rtt_p99_ms", "web_cpu_per_1k", "connected")} for r in runs if "echo" in r})


if __name__ == "__main__":
    main()
