"""Progress latency: from an agent emitting a progress message to a subscribed browser
socket receiving it, over the production shape (daphne, channels-redis pub/sub layer,
PostgreSQL): p50/p99 and the messages lost (by sequence), for 1 job at 100 messages a
second and 50 jobs at 20 a second each.

    .venv/bin/python bench/progress_latency.py [--scenario single|many|both] [--seconds 20] [--warmup 2]
    .venv/bin/python bench/progress_latency.py --smoke    # what `make test` runs: single, 2 s

Each job has its own node and agent socket (/ws/agent/) and one viewer socket
(/ws/jobs/<id>/, a member of the owner organization, resynced at the start). Every
progress message carries one item whose step is the message's sequence number; the viewer
matches points by step. Sender and viewer run in one event loop on this machine, so both
timestamps come from the same clock (time.time()). A message is lost when its point has
not reached the viewer 10 s after the last send. The first --warmup seconds of each run
(a fresh server opening its database and Redis connections) count towards sent and lost
but not towards the latency percentiles. Target: p99 <= 100 ms, 0 lost. Baseline, in the same
run: the WebSocket ping round trip on the first agent socket (the server and the socket
without the platform).
"""

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, percentile, report, table  # noqa: E402
from _platform import Platform, _free_port, reset, setup_django  # noqa: E402

# A database and Redis database of its own: the other execution benchmarks truncate
# computemesh_bench_exec and flush Redis 13 when they start, which would wreck a run that
# overlaps one of them.
DB_URL = os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/computemesh_bench_latency")
REDIS_URL = os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/12")
TARGET_P99_MS = 100.0
GRACE_S = 10.0
SCENARIOS = {"single": (1, 100), "many": (50, 20)}
RESULTS: dict[str, dict] = {}


def make_running_job(consumer, index: int):
    """A running job with one running assignment on node bench-cpu-<index>."""
    from datetime import timedelta

    from django.utils import timezone

    from marketplace.models import Assignment, Job, Node
    from marketplace.services.job_spec import JobSpec
    from marketplace.services.jobs import job_submit

    job = job_submit(owner=consumer, spec=JobSpec(
        name=f"latency-{index}", template="tabular-classifier", dataset="sample:breast-cancer", nodes=1,
        gpus_per_node=1, gpu_models=("cpu",), max_price_per_gpu_hour=Decimal("1"), budget=Decimal("10"),
        deadline=timezone.now() + timedelta(days=1)))
    node = Node.objects.get(name=f"bench-cpu-{index}")
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    return Assignment.objects.create(job=job, node=node, offer=node.offers.get(), attempt=1, node_rank=0,
                                     gpus=1, price_per_gpu_hour=Decimal("0.01"),
                                     status=Assignment.Status.RUNNING, started_at=timezone.now())


def make_viewer(consumer) -> str:
    """A member of the consumer organization; returns its API token key."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from marketplace.models import Membership

    user = get_user_model().objects.create_user(username="bench-viewer", password=None)
    Membership.objects.create(user=user, organization=consumer, role=Membership.Role.MEMBER)
    return Token.objects.create(user=user).key


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stream:
    """One job: its agent socket and its viewer socket."""

    def __init__(self, job_id: int, assignment: int, agent_token: str):
        self.job_id, self.assignment, self.agent_token = job_id, assignment, agent_token
        self.sent: dict[int, float] = {}      # seq -> time.time() at send
        self.received: dict[int, float] = {}  # seq (= step) -> time.time() at receipt
        self.acked = 0
        self.errors: list[dict] = []
        self.last_send = 0.0


async def run_streams(ports: list[int], viewer_token: str, streams: list[Stream], rate: int, seconds: int,
                      daphne_pids: list[int]) -> dict:
    import websockets

    agents, viewers = [], []
    turn = iter(range(10**9))  # connections go round the servers, as a balancer spreads them

    def server() -> tuple[str, str]:
        port = ports[next(turn) % len(ports)]
        return f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"

    for s in streams:
        base, origin = server()
        agents.append(await websockets.connect(
            f"{base}/ws/agent/", origin=origin,
            additional_headers={"Authorization": f"Token {s.agent_token}"}, max_size=8 * 1024 * 1024))
        base, origin = server()
        viewers.append(await websockets.connect(
            f"{base}/ws/jobs/{s.job_id}/", origin=origin,
            additional_headers={"Authorization": f"Token {viewer_token}"}, max_size=64 * 1024 * 1024))

    pings = []
    for _ in range(50):
        t0 = time.perf_counter()
        await (await agents[0].ping())
        pings.append((time.perf_counter() - t0) * 1000)

    history_seen = asyncio.Event()
    histories = 0

    async def watch(s: Stream, ws):
        nonlocal histories
        async for raw in ws:
            now = time.time()
            m = json.loads(raw)
            kind = m.get("type")
            if kind == "metrics":
                points = m.get("points", [])
            elif kind == "history":
                points = m.get("metrics", [])
                histories += 1
                if histories == len(streams):
                    history_seen.set()
            else:
                if kind == "error":
                    s.errors.append(m)
                continue
            for p in points:
                s.received.setdefault(int(p["step"]), now)

    async def acks(s: Stream, ws):
        async for raw in ws:
            m = json.loads(raw)
            if m.get("type") == "ack":
                s.acked += len(m.get("ids") or [m.get("ack")])
            elif m.get("type") == "error":
                s.errors.append(m)

    async def send(s: Stream, ws, phase: float, start: float):
        total = rate * seconds
        for i in range(total):
            due = start + phase + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            seq = i + 1
            at = time.time()
            s.sent[seq] = at
            await ws.send(json.dumps({"type": "progress", "id": f"p{seq}", "assignment": s.assignment,
                                      "seq": seq, "items": [{"step": seq, "total_steps": total,
                                                             "loss": 1.0 / seq, "samples_per_sec": 1000.0,
                                                             "at": at}]}))
        s.last_send = time.time()

    readers = [asyncio.create_task(watch(s, v)) for s, v in zip(streams, viewers, strict=True)]
    readers += [asyncio.create_task(acks(s, a)) for s, a in zip(streams, agents, strict=True)]
    for v in viewers:
        await v.send(json.dumps({"type": "resync", "after_seq": 0, "after_log_seq": 0}))
    await asyncio.wait_for(history_seen.wait(), timeout=30)

    cpu0 = sum(cpu_seconds(pid) for pid in daphne_pids)
    client0, wall0 = time.process_time(), time.perf_counter()
    start = time.perf_counter() + 0.2
    # Spread the jobs' sends evenly over each 1/rate interval, as independent agents would be.
    await asyncio.gather(*(send(s, a, j / (rate * len(streams)), start)
                           for j, (s, a) in enumerate(zip(streams, agents, strict=True))))
    send_wall = time.perf_counter() - wall0
    cpu1, client1 = sum(cpu_seconds(pid) for pid in daphne_pids), time.process_time()
    last_send = max(s.last_send for s in streams)
    while time.time() < last_send + GRACE_S:
        if all(len(s.received) >= len(s.sent) and s.acked >= len(s.sent) for s in streams):
            break
        await asyncio.sleep(0.1)
    drain_s = time.time() - last_send
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await asyncio.gather(*(ws.close() for ws in agents + viewers), return_exceptions=True)
    return {"daphne_cpu": (cpu1 - cpu0) / send_wall, "client_cpu": (client1 - client0) / send_wall,
            "send_wall": send_wall, "drain_s": drain_s, "pings": pings}


def wait_for_http(base: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base + "/api/v1/templates/", timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("daphne did not start") from None
            time.sleep(0.3)


def scenario(name: str, jobs: int, rate: int, seconds: int, warmup: float, servers: int = 1,
             asgi: str = "daphne") -> list:
    import redis

    from marketplace.models import MetricPoint

    began = time.monotonic()
    tokens, consumer = reset(nodes=jobs)
    assignments = [make_running_job(consumer, i) for i in range(jobs)]
    viewer_token = make_viewer(consumer)
    streams = [Stream(a.job_id, a.pk, t) for a, t in zip(assignments, tokens, strict=True)]
    platform = Platform()
    platform.env.update(DATABASE_URL=DB_URL, REDIS_URL=REDIS_URL)
    redis.Redis.from_url(REDIS_URL).flushdb()
    ports = [platform.port] + [_free_port() for _ in range(servers - 1)]
    command = {
        "daphne": lambda port: [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                "webapp.asgi:application"],
        # uvloop, httptools and the websockets protocol (uvicorn[standard]); no access log.
        "uvicorn": lambda port: [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                                 "--no-access-log", "--log-level", "warning", "webapp.asgi:application"],
    }[asgi]
    daphnes = [platform._spawn(f"{asgi}-{i}", command(port)) for i, port in enumerate(ports)]
    try:
        for port in ports:
            wait_for_http(f"http://127.0.0.1:{port}")
        stats = asyncio.run(run_streams(ports, viewer_token, streams, rate, seconds,
                                        [d.pid for d in daphnes]))
    finally:
        platform.stop()
    persisted = MetricPoint.objects.filter(job__in=[s.job_id for s in streams]).count()

    sent = sum(len(s.sent) for s in streams)
    received = sum(len(set(s.sent) & set(s.received)) for s in streams)
    lost = sent - received
    acked = sum(s.acked for s in streams)
    skip = int(warmup * rate)
    ms = [(s.received[q] - t) * 1000 for s in streams for q, t in s.sent.items()
          if q in s.received and q > skip]
    every = [(s.received[q] - t) * 1000 for s in streams for q, t in s.sent.items() if q in s.received]
    p50, p99, worst = (percentile(ms, 50), percentile(ms, 99), max(ms)) if ms else (float("nan"),) * 3
    ok = lost == 0 and p99 <= TARGET_P99_MS
    errors = [e for s in streams for e in s.errors]
    print(f"\n[{name}] {jobs} job(s) x {rate} msg/s for {seconds} s on {servers} {asgi} process(es): "
          f"persisted {persisted}, acked {acked} "
          f"of {sent}; server CPU (all) {stats['daphne_cpu']:.0%} and client CPU {stats['client_cpu']:.0%} "
          f"during the {stats['send_wall']:.1f} s send window; drained {stats['drain_s']:.1f} s after the "
          f"last send; errors {len(errors)}{' e.g. ' + json.dumps(errors[0]) if errors else ''}; "
          f"scenario took {time.monotonic() - began:.0f} s; logs in {platform.tmp}")
    if every:
        firsts = [(s.received[q] - t) * 1000 for s in streams for q, t in s.sent.items()
                  if q in s.received and q <= rate * seconds // 4]
        lasts = [(s.received[q] - t) * 1000 for s in streams for q, t in s.sent.items()
                 if q in s.received and q > 3 * rate * seconds // 4]
        trend = (f"p50 first quarter {percentile(firsts, 50):.1f} ms, last quarter "
                 f"{percentile(lasts, 50):.1f} ms; " if firsts and lasts else "")
        print(f"  {trend}with the warm-up included: {len(every)} received, p50 "
              f"{percentile(every, 50):.1f} ms, p99 {percentile(every, 99):.1f} ms, "
              f"highest step received {max(max(s.received, default=0) for s in streams)}")

    def fmt(value: float) -> str:
        return "n/a" if value != value else f"{value:.1f}"

    pings = stats["pings"]
    print(f"  baseline, WebSocket ping round trip on an agent socket ({len(pings)}): p50 "
          f"{percentile(pings, 50):.1f} ms, p99 {percentile(pings, 99):.1f} ms")
    RESULTS[name] = {"sent": sent, "received": received, "lost": lost, "persisted": persisted,
                     "p50_ms": p50, "p99_ms": p99, "ping_p50_ms": percentile(pings, 50),
                     "ping_p99_ms": percentile(pings, 99)}
    return [jobs, rate, servers, sent, received, lost, fmt(p50), fmt(p99), fmt(worst),
            "PASS" if ok else "FAIL"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["single", "many", "both"], default="both")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--servers", type=int, default=1,
                        help="ASGI server processes; sockets are spread over them as a balancer would")
    parser.add_argument("--asgi", choices=["daphne", "uvicorn"], default="daphne", help="the ASGI server")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds at the start left out of the latency percentiles")
    parser.add_argument("--smoke", action="store_true", help="the single scenario for 2 s")
    args = parser.parse_args()
    if args.smoke:
        args.scenario, args.seconds, args.warmup = "single", 2, 0.5
    setup_django()
    print(machine())
    names = ["single", "many"] if args.scenario == "both" else [args.scenario]
    rows = [scenario(name, *SCENARIOS[name], args.seconds, args.warmup, args.servers, args.asgi)
            for name in names]
    print(f"\nProgress message -> browser socket, over {args.asgi} + channels-redis pub/sub + PostgreSQL "
          f"(database {DB_URL.rsplit('/', 1)[1]}); target p99 <= {TARGET_P99_MS:.0f} ms, 0 lost; "
          f"latency after a {args.warmup:g} s warm-up:")
    print(table(["jobs", "rate/s", "servers", "sent", "received", "lost", "p50 ms", "p99 ms", "max ms",
                 "verdict"], rows))
    report("progress_latency", smoke=args.smoke,
           baseline={f"{k}_{b}": v[b] for k, v in RESULTS.items() for b in ("ping_p50_ms", "ping_p99_ms")},
           figures={f"{k}_{f}": v for k, r in RESULTS.items() for f, v in r.items()
                    if not f.startswith("ping")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
