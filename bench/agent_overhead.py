"""Agent overhead: training steps per second of the same template and steps run through
the platform and its agent, and run directly with `torchrun --standalone`.

    .venv/bin/python bench/agent_overhead.py [--runs 5] [--epochs 20] [--smoke]

Target: agent / direct ≥ 0.97. `--smoke` (what `make test` runs): one run of one epoch,
which proves the path works, not the ratio (too few steps to mean anything).
"""

import argparse
import statistics
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, report  # noqa: E402
from _platform import Platform, bare_torchrun, reset, setup_django  # noqa: E402


def rate(points: list[tuple[int, float]]) -> float:
    """Steps per second between the first and the last progress point."""
    (s0, t0), (s1, t1) = points[0], points[-1]
    return (s1 - s0) / (t1 - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="one run of one epoch")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.epochs = 1, 1
    setup_django()
    from django.utils import timezone

    from marketplace.models import Job
    from marketplace.services.job_spec import JobSpec
    from marketplace.services.jobs import job_submit

    print(machine())
    tokens, consumer = reset(nodes=1)
    platform = Platform().start(tokens)
    params = {"epochs": args.epochs, "batch_size": 64, "channels": 64, "seed": 0, "checkpoint_every": 100}
    agent_rates, direct_rates = [], []
    try:
        for i in range(args.runs):
            job = job_submit(owner=consumer, spec=JobSpec(
                name=f"overhead {i}", template="image-classifier", dataset="sample:digits", nodes=1,
                gpus_per_node=2, gpu_models=("cpu",), params=params,
                max_price_per_gpu_hour=Decimal("1"), budget=Decimal("10"),
                deadline=timezone.now() + timedelta(days=1)))
            deadline = time.monotonic() + 600
            # Through verification: a job left `verifying` means the worker misses a queue.
            while (status := Job.objects.get(pk=job.pk).status) not in ("completed", "failed"):
                if time.monotonic() > deadline:
                    raise SystemExit(f"job {job.pk} did not finish ({status}); see {platform.tmp}")
                time.sleep(0.5)
            points = [(p.step, p.at.timestamp()) for p in job.metrics.filter(step__gte=1).order_by("seq")]
            agent_rates.append(rate(points))
            events = bare_torchrun({"template": job.template, "params": job.params,
                                    "dataset": {"kind": "sample", "name": "digits"}, "backend": "gloo"},
                                   nproc=2, workdir=platform.tmp / f"direct-{i}")
            direct = [(e["step"], e["at"]) for e in events[1:] if e.get("type") == "progress"]
            direct_rates.append(rate(direct))
            print(f"run {i + 1}: {points[-1][0]} steps; agent {agent_rates[-1]:.1f} steps/s, "
                  f"direct torchrun {direct_rates[-1]:.1f} steps/s")
    finally:
        platform.stop()
    a, d = statistics.median(agent_rates), statistics.median(direct_rates)
    print(f"\nimage-classifier on digits, 1 node × 2 gloo processes (CPU), {args.runs} runs, medians:")
    print(f"  through the agent: {a:.1f} steps/s; direct torchrun: {d:.1f} steps/s; "
          f"ratio {a / d:.3f} — target ≥ 0.97: {'met' if a / d >= 0.97 else 'MISSED'}")
    report("agent_overhead", smoke=args.smoke, baseline={"direct_torchrun_steps_per_s": d},
           figures={"agent_steps_per_s": a, "ratio": a / d, "runs": args.runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
