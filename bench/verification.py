"""Verification: its overhead, false rejections of honest work, and how often cheating is
caught. Real runs of the training runtime (torch.distributed.run, gloo, `--nproc` ranks)
checked by the platform's verifier logic (services/verification.py's segment choice and
metric test, workers/training/replay.py's replay), without the database.

    .venv/bin/python bench/verification.py [--honest 20] [--trials 10] [--nproc 2] [--epochs 8]
    .venv/bin/python bench/verification.py --smoke   # what `make test` runs: 1 honest, 1 cheat

Reported: replayed steps / trained steps (target ≤ 10 %); the replay's compute as a share
of the training's: replay seconds on one thread over W ranks × rank 0's started→finished
seconds (each rank trains on one thread, `OMP_NUM_THREADS=1`; replay runs the W ranks one
after the other in one process, so compute per replayed step equals the job's per trained
step); the verifier's whole wall time as a share of the training's (loading data and
checkpoints included); the false-reject rate over honest runs, and the detection rate for
each fault. The baseline is the training itself (rank 0's seconds), in the same run.
`--smoke`: one honest run and one run skipping 10 % of its steps, 2 epochs each.
"""

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings_test")

import django  # noqa: E402

django.setup()

import torch  # noqa: E402
from _common import git_revision, machine, report  # noqa: E402

from marketplace.services.verification import choose_segments, metric_inflated  # noqa: E402
from tests.training_runs import tabular_spec, train  # noqa: E402
from workers.training import checkpoint, replay  # noqa: E402

THRESHOLD, SHARE, TOLERANCE = 1e-4, 0.1, 1e-3


def verify(spec: dict, events: dict, world: int) -> dict:
    began = time.perf_counter()
    replayer = replay.Replayer(replay.Job(template=spec["template"], params=spec["params"],
                                          dataset=spec["dataset"], world_size=world))
    paths = {c["step"]: c["path"] for c in events["checkpoint"]}
    total = events["finished"]["step"]
    segments = choose_segments(sorted(paths), train_steps=total, share=SHARE, rng=secrets.SystemRandom())
    checks = [replay.check_segment(replayer, paths[a], paths[b], threshold=THRESHOLD) for a, b in segments]
    distances = [c.rel_l2 for c in checks]
    artifact = checkpoint.load(events["finished"]["artifact"])
    artifact_ok = replay.rel_l2(artifact["model"], checkpoint.load(paths[total])["model"]) == 0
    metric, measured = replayer.evaluate(artifact["model"])
    inflated = metric_inflated(events["finished"]["value"], measured, TOLERANCE,
                               lower_is_better=replayer.metric_lower_is_better)
    return {"passed": bool(segments) and all(d <= THRESHOLD for d in distances) and artifact_ok
            and not inflated, "replayed": sum(b - a for a, b in segments), "trained": total,
            "seconds": time.perf_counter() - began, "replay_seconds": sum(c.seconds for c in checks),
            # Did the fault change what was reported? (an accuracy of 1.0 cannot be inflated)
            "metric_lie": events["finished"]["value"] != measured,
            "train_seconds": events["finished"]["at"] - events["started"]["at"],
            "max_rel_l2": max(distances, default=0.0), "segments": len(segments)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--honest", type=int, default=20, help="honest runs")
    parser.add_argument("--trials", type=int, default=10, help="runs per fault")
    parser.add_argument("--nproc", type=int, default=2, help="ranks per run (world size)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="one honest run and one cheat, 2 epochs")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as each training rank runs: compute shares compare like with like
    cases = [("honest", "", args.honest), ("skip_steps=0.1", "skip_steps=0.1", args.trials),
             ("skip_steps=0.02", "skip_steps=0.02", args.trials),
             ("inflate_metric=0.05", "inflate_metric=0.05", args.trials)]
    if args.smoke:
        args.epochs = 2
        cases = [("honest", "", 1), ("skip_steps=0.1", "skip_steps=0.1", 1)]
    print(f"machine: {machine()}; revision {git_revision()}; tabular-classifier (breast-cancer), "
          f"{args.epochs} epochs, batch 8, world size {args.nproc}; threshold {THRESHOLD:g}, "
          f"replay share {SHARE:.0%}, metric tolerance {TOLERANCE:g}")
    rows, failed_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for label, faults, runs in cases:
            results = []
            for i in range(runs):
                spec = tabular_spec(Path(tmp) / f"{label}-{i}", seed=1000 + i, epochs=args.epochs,
                                    batch_size=8)
                try:
                    events = train(spec, nproc=args.nproc, faults=faults)
                except RuntimeError as exc:  # a run that did not train is not a verdict: say so
                    failed_runs.append(f"{label} #{i}: {str(exc).splitlines()[0]}")
                    tail = "\n    ".join(line for line in str(exc).splitlines()[-12:] if line.strip())
                    print(f"  ! {failed_runs[-1]}\n    {tail}", flush=True)
                    continue
                results.append(verify(spec, events, args.nproc))
            rejected = sum(not r["passed"] for r in results)
            rows.append((label, len(results), rejected, results))
            print(f"  {label}: {len(results)} runs, {rejected} rejected", flush=True)
    print()
    print(f"{'runs':<22}{'n':>4}{'rejected':>10}{'metric lies':>12}{'replayed/trained':>18}"
          f"{'replay CPU/train CPU':>22}{'replay s/train s':>18}{'verify s/train s':>18}{'max rel L2':>12}")
    for label, runs, rejected, results in rows:
        share = sum(r["replayed"] for r in results) / sum(r["trained"] for r in results)
        replay_wall = statistics.median(r["replay_seconds"] / r["train_seconds"] for r in results)
        replay_cpu = sum(r["replay_seconds"] for r in results) / (
            args.nproc * sum(r["train_seconds"] for r in results))
        wall = statistics.median(r["seconds"] / r["train_seconds"] for r in results)
        worst = max(r["max_rel_l2"] for r in results)
        lies = sum(r["metric_lie"] for r in results)
        print(f"{label:<22}{runs:>4}{rejected:>10}{lies:>12}{share:>17.1%}{replay_cpu:>21.1%}"
              f"{replay_wall:>17.1%}{wall:>17.1%}{worst:>12.1e}")
    print("(wall-time shares are medians; train s is rank 0's first to last step; replay CPU/train CPU "
          "is the replay's single-thread seconds over nproc x train s, summed over the runs)")
    honest = rows[0]
    print(f"\nfalse-reject rate: {honest[2]}/{honest[1]}")
    for label, runs, rejected, _ in rows[1:]:
        print(f"detection rate {label}: {rejected}/{runs}")
    print(f"runs that did not train (not counted): {len(failed_runs)}")
    every = [r for _, _, _, results in rows for r in results]
    report("verification", smoke=args.smoke,
           baseline={"train_seconds_median": statistics.median(r["train_seconds"] for r in every)},
           figures={"verify_seconds_median": statistics.median(r["seconds"] for r in every),
                    "replayed_share": sum(r["replayed"] for r in every) / sum(r["trained"] for r in every),
                    **{f"{label}: rejected": rejected for label, _, rejected, _ in rows},
                    **{f"{label}: runs": runs for label, runs, _, _ in rows},
                    "runs_that_did_not_train": len(failed_runs)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
