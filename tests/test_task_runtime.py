"""A consumer's own task (the worked example of docs/tasks.md, examples/tasks/vibration)
trained by the real runtime, two gloo ranks under torch.distributed.run inside the provider
sandbox as the agent runs it, then replayed bit for bit by the verifier's replay
(workers/training/replay.py), and replayed twice to the same bits (the determinism check)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workers.agent import launcher
from workers.agent import sandbox as sandboxing
from workers.training import checkpoint, determinism, replay

from .training_runs import read_events

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tasks" / "vibration"
PARAMS = {"epochs": 2, "batch_size": 16, "learning_rate": 0.05, "channels": 8,
          "label_smoothing": 0.05, "checkpoint_every": 10, "seed": 5}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The example trained as the agent runs a bundle: the bundle and the data in the job's
    folder, torchrun inside the sandbox (or bare where bubblewrap cannot run)."""
    job = tmp_path_factory.mktemp("agent") / "assignments" / "3"
    shutil.copytree(EXAMPLE, job / "bundle", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(job / "data"), "--windows", "800"],
                   check=True, capture_output=True, cwd=ROOT)
    spec = {"bundle": {"path": str(job / "bundle"), "entry": "task:VibrationFaults"},
            "data_dir": str(job / "data"), "dataset": {"kind": "files"}, "params": PARAMS,
            "workdir": str(job), "backend": "gloo", "pause_file": str(job / "pause"),
            "verify": {"replay_share": 0.2, "segments": 2}}
    (job / "spec.json").write_text(json.dumps(spec))
    cmd = launcher.command(spec_path=job / "spec.json", nnodes=1, node_rank=0, nproc_per_node=2,
                           master_addr="127.0.0.1", master_port=launcher.free_port())
    env = launcher.environment(threads=1)
    box = None
    if sandboxing.available():
        cmd, env, box = launcher.sandboxed(cmd, env, job_dir=job, nnodes=1)

    async def go() -> tuple[int, bytes]:
        process = await launcher.start(cmd, env, job)
        out, _ = await asyncio.wait_for(process.communicate(), 300)
        return process.returncode, out

    try:
        code, out = asyncio.run(go())
    finally:
        if box is not None:
            box.close()
    assert code == 0, out.decode()[-4000:]
    return spec, read_events(job), box is not None


@pytest.fixture(autouse=True)
def one_thread():
    """As the ranks ran (OMP_NUM_THREADS=1): another thread count sums in another order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _replayer(spec: dict) -> replay.Replayer:
    return replay.Replayer(replay.Job(template="", params=spec["params"], dataset=spec["dataset"],
                                      world_size=2, bundle=spec["bundle"], data_dir=spec["data_dir"]))


def test_the_custom_task_trains_on_two_ranks_inside_the_sandbox(trained):
    spec, events, sandboxed = trained
    assert sandboxed or not sandboxing.available()
    finished = events["finished"]
    assert finished["metric"] == "accuracy" and finished["value"] > 0.6, finished
    assert len(finished["param_digests"]) == 2 and len(set(finished["param_digests"])) == 1
    assert events["started"]["world_size"] == 2
    assert len(events["checkpoint"]) >= 4


def test_its_checkpoints_replay_bit_for_bit(trained):
    spec, events, _ = trained
    paths = {c["step"]: c["path"] for c in events["checkpoint"]}
    steps = sorted(paths)
    replayer = _replayer(spec)
    for a, b in [(None, steps[0]), (steps[0], steps[1]), (steps[-2], steps[-1])]:
        result = replay.check_segment(replayer, paths[a] if a else None, paths[b], threshold=1e-4)
        assert result.passed and result.rel_l2 == 0.0, result
    final = checkpoint.load(paths[steps[-1]])
    assert replayer.evaluate(final["model"]) == (events["finished"]["metric"], events["finished"]["value"])


def test_a_wrong_schedule_is_caught_by_the_replay(trained):
    """The schedule is the task's (learning_rate by step): a replay under another learning
    rate differs, so the replay does exercise it."""
    spec, events, _ = trained
    paths = {c["step"]: c["path"] for c in events["checkpoint"]}
    a, b = sorted(paths)[1:3]
    other = {**spec, "params": {**spec["params"], "learning_rate": 0.0505}}
    result = replay.check_segment(_replayer(other), paths[a], paths[b], threshold=1e-4)
    assert not result.passed and result.rel_l2 > 1e-4, result


def test_replaying_the_same_steps_twice_gives_the_same_bits(trained):
    spec, events, _ = trained
    start = checkpoint.load(sorted(events["checkpoint"], key=lambda c: c["step"])[1]["path"])
    replayer = _replayer(spec)
    to_step = int(start["step"]) + 5
    first, second = (replayer.replay(start, to_step=to_step) for _ in range(2))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


NOISY = '''
import random
import torch
from workers.training.task import Task


class Noisy(Task):
    """Draws from Python's unseeded generator: honest, but not reproducible."""

    def datasets(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 4, generator=g)
        y = (x.sum(1) > 0).long()
        return (x[:200], y[:200]), (x[200:], y[200:])

    def build_model(self):
        return torch.nn.Linear(4, 2)

    def loss(self, model, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x + random.random()), y)

    def evaluate(self, model, held_out, device):
        x, y = held_out
        return {"loss": float(torch.nn.functional.cross_entropy(model(x), y))}
'''


def test_the_determinism_check_tells_a_reproducible_task_from_one_that_is_not(trained, tmp_path):
    spec, _, _ = trained
    ok = determinism.check(_replayer(spec), steps=3)
    assert ok.deterministic and ok.rel_l2 == 0.0 and ok.steps == 3 and ok.seconds > 0
    (tmp_path / "noisy.py").write_text(NOISY)
    noisy = replay.Replayer(replay.Job(
        template="", params={"epochs": 2, "batch_size": 16, "learning_rate": 0.01, "seed": 0},
        dataset={"kind": "none"}, world_size=2,
        bundle={"path": str(tmp_path / "noisy.py"), "entry": "noisy:Noisy"}))
    result = determinism.check(noisy, steps=3)
    assert not result.deterministic and result.rel_l2 > 0


def test_the_verifier_checks_a_bundle_inside_the_sandbox(trained):
    """workers/verify/sandboxed.py: the consumer's code replayed and evaluated in a sandbox
    on the verifier, with the same findings as the in-process check."""
    from workers.verify import check_attempt
    from workers.verify.sandboxed import check_attempt_sandboxed

    if not sandboxing.available():
        pytest.skip("bubblewrap cannot build a sandbox here")
    spec, events, _ = trained
    paths = {c["step"]: c["path"] for c in events["checkpoint"]}
    steps = sorted(paths)
    plan = {"template": "", "params": spec["params"], "world_size": 2,
            "checkpoints": {0: None, **{s: paths[s] for s in steps}},
            "segments": [(0, steps[0]), (steps[1], steps[2])], "threshold": 1e-4,
            "check_model": True, "artifact": events["finished"]["artifact"],
            "final_checkpoint": paths[steps[-1]], "final_step": steps[-1],
            "bundle": spec["bundle"], "data_dir": spec["data_dir"]}
    inside = check_attempt_sandboxed(plan, spec["dataset"])
    assert inside["findings"] == [] and all(s["passed"] for s in inside["segments"]), inside
    assert inside["metric_name"] == "accuracy"
    assert inside["metric_measured"] == events["finished"]["value"]
    outside = check_attempt(plan, spec["dataset"])
    assert [s["rel_l2"] for s in inside["segments"]] == [s["rel_l2"] for s in outside["segments"]]
