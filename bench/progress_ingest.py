"""Progress ingest: one job's agent sends 100 progress messages a second over the real
agent socket (daphne, Redis channel layer, PostgreSQL); how long until each is persisted
and acknowledged, and whether persisting keeps up.

    .venv/bin/python bench/progress_ingest.py [--rate 100] [--seconds 30] [--smoke]

The platform acknowledges a message only after its points are committed, so the ack
latency is the persist latency. Target: it does not grow over the run (no backlog).
Baseline, in the same run: the WebSocket ping round trip on the same socket (what the
server and the socket cost without the platform). `--smoke` (what `make test` runs):
20 messages a second for 2 s.
"""

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, percentile, report  # noqa: E402
from _platform import Platform, reset, setup_django  # noqa: E402

PINGS = 50


def make_running_job(consumer, tokens):
    from datetime import timedelta

    from django.utils import timezone

    from marketplace.models import Assignment, Job, Node
    from marketplace.services.job_spec import JobSpec
    from marketplace.services.jobs import job_submit

    job = job_submit(owner=consumer, spec=JobSpec(
        name="ingest", template="tabular-classifier", dataset="sample:breast-cancer", nodes=1,
        gpus_per_node=1, gpu_models=("cpu",), max_price_per_gpu_hour=Decimal("1"), budget=Decimal("10"),
        deadline=timezone.now() + timedelta(days=1)))
    node = Node.objects.get(name="bench-cpu-0")
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    return Assignment.objects.create(job=job, node=node, offer=node.offers.get(), attempt=1, node_rank=0,
                                     gpus=1, price_per_gpu_hour=Decimal("0.01"),
                                     status=Assignment.Status.RUNNING, started_at=timezone.now())


async def drive(url: str, origin: str, token: str, assignment: int, rate: int, seconds: int):
    import websockets

    sent: dict[str, float] = {}
    latencies: list[tuple[float, float]] = []  # (send time, latency)
    async with websockets.connect(url, origin=origin, additional_headers={"Authorization": f"Token {token}"},
                                  max_size=8 * 1024 * 1024) as ws:
        pings = []
        for _ in range(PINGS):
            t0 = time.perf_counter()
            await (await ws.ping())
            pings.append(time.perf_counter() - t0)

        async def receive():
            async for raw in ws:
                m = json.loads(raw)
                if m.get("type") == "ack":  # one frame may acknowledge several messages
                    now = time.perf_counter()
                    for mid in m.get("ids") or [m.get("ack")]:
                        if mid in sent:
                            t0 = sent.pop(mid)
                            latencies.append((t0, now - t0))
                elif m.get("type") == "error":
                    print("error:", m)

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        total = rate * seconds
        for i in range(total):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            mid = f"p{i}"
            sent[mid] = time.perf_counter()
            await ws.send(json.dumps({"type": "progress", "id": mid, "assignment": assignment, "seq": i + 1,
                                      "items": [{"step": i + 1, "total_steps": total, "loss": 1.0 / (i + 1),
                                                 "samples_per_sec": 1000.0, "at": time.time()}]}))
        deadline = time.perf_counter() + 30
        while sent and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        receiver.cancel()
        return start, latencies, len(sent), pings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="20 messages a second for 2 s")
    args = parser.parse_args()
    if args.smoke:
        args.rate, args.seconds = 20, 2
    setup_django()
    from marketplace.models import MetricPoint

    print(machine())
    tokens, consumer = reset(nodes=1)
    assignment = make_running_job(consumer, tokens)
    platform = Platform()
    import redis

    redis.Redis.from_url(platform.env["REDIS_URL"]).flushdb()
    platform._spawn("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(platform.port),
                               "webapp.asgi:application"])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(platform.base + "/api/v1/templates/", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("daphne did not start") from None
                time.sleep(0.3)
        start, latencies, missing, pings = asyncio.run(drive(
            f"ws://127.0.0.1:{platform.port}/ws/agent/", platform.base, tokens[0], assignment.pk,
            args.rate, args.seconds))
    finally:
        platform.stop()
    persisted = MetricPoint.objects.filter(job=assignment.job_id).count()
    ms = [lat * 1000 for _, lat in latencies]
    first = [lat * 1000 for t, lat in latencies if t - start < args.seconds / 3]
    last = [lat * 1000 for t, lat in latencies if t - start >= 2 * args.seconds / 3]
    database = platform.env["DATABASE_URL"].rsplit("/", 1)[1]
    print(f"\n{args.rate} progress messages/s for {args.seconds} s over /ws/agent/ "
          f"(daphne, Redis channel layer, PostgreSQL; database {database}):")
    print(f"  persisted {persisted} of {args.rate * args.seconds}; unacknowledged at the end: {missing}")
    print(f"  ack (= persist) latency: p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
          f"max {max(ms):.1f} ms")
    early, late = percentile(first, 50), percentile(last, 50)
    keeps_up = missing == 0 and late < 1.5 * early + 20  # no backlog building up
    print(f"  first third p50 {early:.1f} ms vs last third p50 {late:.1f} ms "
          f"— keeps up: {'yes' if keeps_up else 'NO'}")
    ping_ms = [p * 1000 for p in pings]
    print(f"  baseline, WebSocket ping round trip on the same socket ({PINGS}): p50 "
          f"{percentile(ping_ms, 50):.1f} ms, p99 {percentile(ping_ms, 99):.1f} ms")
    report("progress_ingest", smoke=args.smoke,
           baseline={"ping_p50_ms": percentile(ping_ms, 50), "ping_p99_ms": percentile(ping_ms, 99)},
           figures={"sent": args.rate * args.seconds, "persisted": persisted, "unacknowledged": missing,
                    "ack_p50_ms": percentile(ms, 50), "ack_p99_ms": percentile(ms, 99),
                    "keeps_up": keeps_up})
    return 0


if __name__ == "__main__":
    sys.exit(main())
