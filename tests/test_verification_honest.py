"""No false rejections: 20 honest jobs, each a real run of the training runtime, verified by
the platform's checks (random segments within 10 % of the steps, replayed; the final model
against the last checkpoint; the held-out metric re-measured). Most run in this process
as a gloo world of one (the runtime's own main, started as torch.distributed.run would
start one rank); two run as two ranks under torch.distributed.run."""

import math
import secrets
import socket

from marketplace.services.verification import choose_segments, metric_inflated
from workers.training import checkpoint, replay, run

from .training_runs import read_events, tabular_spec, train

THRESHOLD, SHARE, TOLERANCE = 1e-4, 0.1, 1e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_in_process(spec: dict, monkeypatch) -> dict:
    import json
    from pathlib import Path

    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "spec.json").write_text(json.dumps(spec))
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                       "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("COMPUTEMESH_FAULTS", raising=False)
    assert run.main(str(workdir / "spec.json")) == 0
    return read_events(workdir)


def verify(spec: dict, events: dict, world: int) -> tuple[bool, list[str], float]:
    """The platform's verdict on one run (services/verification.py's checks without the
    database). Returns (passed, reasons, replayed share of the steps)."""
    job = replay.Job(template=spec["template"], params=spec["params"], dataset=spec["dataset"],
                     world_size=world)
    replayer = replay.Replayer(job)
    paths = {c["step"]: c["path"] for c in events["checkpoint"]}
    total = events["finished"]["step"]
    segments = choose_segments(sorted(paths), train_steps=total, share=SHARE, rng=secrets.SystemRandom())
    reasons = []
    for a, b in segments:
        result = replay.check_segment(replayer, paths[a], paths[b], threshold=THRESHOLD)
        if not result.passed:
            reasons.append(f"replay {a}..{b}: {result.rel_l2:.2e}")
    artifact = checkpoint.load(events["finished"]["artifact"])
    if replay.rel_l2(artifact["model"], checkpoint.load(paths[total])["model"]) != 0:
        reasons.append("artifact differs from the last checkpoint")
    metric, measured = replayer.evaluate(artifact["model"])
    if metric_inflated(metric, events["finished"]["value"], measured, TOLERANCE):
        reasons.append(f"metric {events['finished']['value']} vs {measured}")
    return not reasons and bool(segments), reasons, sum(b - a for a, b in segments) / total


def _jobs(tmp_path) -> list[tuple[dict, int]]:
    jobs = []
    for i in range(12):
        jobs.append((tabular_spec(tmp_path / f"tab-{i}", seed=i, learning_rate=0.001 * (1 + i % 4),
                                  hidden_units=16 * (1 + i % 3), batch_size=16 + 8 * (i % 3)), 1))
    for i in range(4):
        spec = tabular_spec(tmp_path / f"img-{i}", seed=100 + i)
        spec.update(template="image-classifier", dataset={"kind": "sample", "name": "digits"},
                    params={"epochs": 2, "batch_size": 64, "learning_rate": 0.003, "channels": 4,
                            "checkpoint_every": 50, "seed": 100 + i})
        jobs.append((spec, 1))
    for i in range(2):
        spec = tabular_spec(tmp_path / f"load-{i}", seed=200 + i)
        spec.update(template="load-forecast", dataset={"kind": "sample", "name": "grid-load"},
                    params={"epochs": 1, "batch_size": 256, "learning_rate": 0.002, "lookback_hours": 24,
                            "horizon_hours": 6, "hidden_size": 8, "checkpoint_every": 50, "seed": 200 + i})
        jobs.append((spec, 1))
    for i in range(2):
        jobs.append((tabular_spec(tmp_path / f"ddp-{i}", seed=300 + i), 2))
    return jobs


def test_twenty_honest_jobs_are_all_verified(tmp_path, monkeypatch):
    verdicts = []
    for spec, world in _jobs(tmp_path):
        events = train(spec, nproc=2) if world == 2 else _run_in_process(spec, monkeypatch)
        verdicts.append((spec["workdir"], world, *verify(spec, events, world)))
    assert len(verdicts) == 20
    rejected = [v for v in verdicts if not v[2]]
    assert rejected == [], rejected  # 0 false rejections
    shares = [v[4] for v in verdicts]
    assert all(0 < s <= SHARE or math.isclose(s, SHARE) for s in shares), shares
