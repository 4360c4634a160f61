"""Sandbox overhead (issue 16): training steps per second of the same job run by the
agent's launcher inside the provider sandbox (bubblewrap, cgroups, rlimits:
workers/agent/sandbox.py) and outside it, alternating, in the same run.

    .venv/bin/python bench/sandbox_overhead.py [--runs 5] [--epochs 10] [--smoke]

Target: inside / outside ≥ 0.98 (steps/s between the first and the last progress point,
medians over the runs). Also reported: the wall time of a whole run each way (start-up
included). `--smoke`: one run each of one epoch, which proves the path, not the ratio.
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine, report  # noqa: E402

sys.path.insert(0, str(ROOT))

from workers.agent import launcher  # noqa: E402
from workers.agent import sandbox as sandboxing  # noqa: E402


def rate(events: list[dict]) -> float:
    points = [(e["step"], e["at"]) for e in events if e["type"] == "progress"]
    (s0, t0), (s1, t1) = points[0], points[-1]
    return (s1 - s0) / (t1 - t0)


async def one(job: Path, *, sandboxed: bool, epochs: int, nproc: int) -> tuple[float, float]:
    """(steps/s, wall seconds) of one run of the image classifier on digits."""
    job.mkdir(parents=True)
    spec = {"template": "image-classifier", "dataset": {"kind": "sample", "name": "digits"},
            "params": {"epochs": epochs, "batch_size": 32, "learning_rate": 0.001, "channels": 32,
                       "checkpoint_every": 100000, "seed": 0},
            "workdir": str(job), "backend": "gloo", "report_every": 5}
    (job / "spec.json").write_text(json.dumps(spec))
    cmd = launcher.command(spec_path=job / "spec.json", nnodes=1, node_rank=0, nproc_per_node=nproc,
                           master_addr="127.0.0.1", master_port=launcher.free_port())
    env = launcher.environment(threads=1)
    box = None
    if sandboxed:
        cmd, env, box = launcher.sandboxed(cmd, env, job_dir=job, nnodes=1)
    began = time.perf_counter()
    try:
        process = await launcher.start(cmd, env, job)
        out, _ = await process.communicate()
    finally:
        if box is not None:
            box.close()
    wall = time.perf_counter() - began
    if process.returncode != 0:
        raise SystemExit(f"run failed ({process.returncode}):\n{out.decode()[-3000:]}")
    events = [json.loads(x) for x in (job / "events.jsonl").read_text().splitlines()]
    return rate(events), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="one run each of one epoch")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.epochs = 1, 1
    if not sandboxing.available():
        raise SystemExit("bubblewrap cannot build a sandbox here (apt-get install bubblewrap)")
    print(machine())
    inside, outside, wall_in, wall_out = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp:
        for i in range(args.runs):
            # Alternate which goes first, so that drifting load on the machine hits both.
            order = (False, True) if i % 2 == 0 else (True, False)
            for sandboxed in order:
                steps, wall = asyncio.run(one(Path(tmp) / f"{i}-{int(sandboxed)}", sandboxed=sandboxed,
                                              epochs=args.epochs, nproc=args.nproc))
                (inside if sandboxed else outside).append(steps)
                (wall_in if sandboxed else wall_out).append(wall)
            print(f"run {i + 1}: inside {inside[-1]:.1f} steps/s ({wall_in[-1]:.1f} s), "
                  f"outside {outside[-1]:.1f} steps/s ({wall_out[-1]:.1f} s)")
    a, b = statistics.median(inside), statistics.median(outside)
    print(f"\nimage-classifier on digits, 1 node × {args.nproc} gloo processes (CPU), {args.epochs} "
          f"epochs, {args.runs} runs each, medians:")
    print(f"  inside the sandbox: {a:.1f} steps/s; outside: {b:.1f} steps/s; ratio {a / b:.3f} — "
          f"target ≥ 0.98: {'met' if a / b >= 0.98 else 'MISSED'}")
    print(f"  whole run: {statistics.median(wall_in):.1f} s inside, {statistics.median(wall_out):.1f} s "
          "outside (start-up included)")
    report("sandbox_overhead", smoke=args.smoke, baseline={"outside_steps_per_s": b,
                                                            "outside_wall_s": statistics.median(wall_out)},
           figures={"inside_steps_per_s": a, "ratio": a / b, "runs": args.runs,
                    "inside_wall_s": statistics.median(wall_in)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
