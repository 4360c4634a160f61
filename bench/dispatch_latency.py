"""Dispatch latency: from a job becoming runnable (funded) to its first training step on
an agent, next to bare `torchrun --standalone` reaching its first step, in the same run.

    .venv/bin/python bench/dispatch_latency.py [--runs 5] [--smoke]

Real parts: PostgreSQL, Redis, daphne, a Celery worker with beat, one local CPU agent.
Target: the platform adds at most 1.0 s at p50. `--smoke` (what `make test` runs): one run
of a one-epoch job, to prove the path still works end to end (verification included).
"""

import argparse
import statistics
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, percentile, report  # noqa: E402
from _platform import Platform, bare_torchrun, reset, setup_django  # noqa: E402

PARAMS = {"epochs": 2, "seed": 0}


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--runs", type=int, default=5)
    args.add_argument("--smoke", action="store_true", help="one run of a one-epoch job")
    parsed = args.parse_args()
    runs = 1 if parsed.smoke else parsed.runs
    params = {**PARAMS, "epochs": 1} if parsed.smoke else PARAMS
    setup_django()
    from django.utils import timezone

    from marketplace.models import Job
    from marketplace.services.job_spec import JobSpec
    from marketplace.services.jobs import job_submit

    print(machine())
    tokens, consumer = reset(nodes=1)
    platform = Platform().start(tokens)
    platform_s, bare_s = [], []
    try:
        for i in range(runs):
            job = job_submit(owner=consumer, spec=JobSpec(
                name=f"latency {i}", template="tabular-classifier", dataset="sample:breast-cancer",
                nodes=1, gpus_per_node=2, gpu_models=("cpu",), params=params,
                max_price_per_gpu_hour=Decimal("1"), budget=Decimal("10"),
                deadline=timezone.now() + timedelta(days=1)))
            runnable = job.events.get(to_status="funded").created_at
            deadline = time.monotonic() + 120
            while True:
                first = job.metrics.filter(step__gte=1).order_by("seq").first()
                if first is not None:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"job {job.pk} did not start; see {platform.tmp}")
                time.sleep(0.05)
            platform_s.append((first.at - runnable).total_seconds())
            # Through verification: a job left `verifying` means the worker misses a queue.
            while (status := Job.objects.get(pk=job.pk).status) not in ("completed", "failed"):
                if time.monotonic() > deadline + 120:
                    raise SystemExit(f"job {job.pk} stuck in {status}; see {platform.tmp}")
                time.sleep(0.2)
            events = bare_torchrun({"template": job.template, "params": job.params,
                                    "dataset": {"kind": "sample", "name": "breast-cancer"},
                                    "backend": "gloo"}, nproc=2, workdir=platform.tmp / f"bare-{i}")
            launched = events[0]["launched_at"]
            first_bare = next(e for e in events[1:] if e["type"] == "progress")
            bare_s.append(first_bare["at"] - launched)
            print(f"run {i + 1}: platform {platform_s[-1]:.2f} s, bare torchrun {bare_s[-1]:.2f} s")
    finally:
        platform.stop()
    p50p, p95p = percentile(platform_s, 50), percentile(platform_s, 95)
    p50b, p95b = percentile(bare_s, 50), percentile(bare_s, 95)
    print(f"\nfunded → first training step, {runs} runs (1 node × 2 gloo processes, CPU):")
    print(f"  platform:           p50 {p50p:.2f} s  p95 {p95p:.2f} s")
    print(f"  bare torchrun:      p50 {p50b:.2f} s  p95 {p95b:.2f} s")
    added = p50p - p50b
    mean = statistics.mean(platform_s) - statistics.mean(bare_s)
    print(f"  added by platform:  p50 {added:.2f} s (mean {mean:.2f} s)"
          f" — target ≤ 1.0 s: {'met' if added <= 1.0 else 'MISSED'}")
    report("dispatch_latency", smoke=parsed.smoke, baseline={"bare_torchrun_p50_s": p50b},
           figures={"platform_p50_s": p50p, "platform_p95_s": p95p, "added_p50_s": added, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
