"""The runtime's side of `assignment.pause` on two nodes (two torch.distributed.run groups
joined by gloo, one rank each, as the agent launches them): the pause file appears on one
node only, and every rank still stops at the same step; node rank 0 checkpoints there, each
node's leader writes paused.json, both exit cleanly. (Resuming from that checkpoint through
the platform: tests/test_budget_e2e.py.)"""

import json
import subprocess
import time
from pathlib import Path

import pytest

from workers.agent import launcher

from .training_runs import ROOT, event_list

pytestmark = pytest.mark.integration


def spec(work: Path, *, rank: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    body = {"template": "image-classifier", "dataset": {"kind": "sample", "name": "digits"},
            # Far longer than the test on any machine: the run stops at the pause.
            "params": {"epochs": 200, "batch_size": 8, "learning_rate": 0.001, "channels": 8,
                       "checkpoint_every": 1000, "seed": 1},
            "workdir": str(work), "backend": "gloo", "resume_from": None,
            "pg_timeout_s": 60, "sync": {"mode": "ddp"}, "nnodes": 2, "node_rank": rank,
            "pause_file": str(work / "pause")}
    (work / "spec.json").write_text(json.dumps(body))
    return work / "spec.json"


def start_two_nodes(tmp: Path, name: str) -> list[subprocess.Popen]:
    port = launcher.free_port()
    procs = []
    for rank in (0, 1):
        work = tmp / f"{name}{rank}"
        cmd = launcher.command(spec_path=spec(work, rank=rank), nnodes=2, node_rank=rank,
                               nproc_per_node=1, master_addr="127.0.0.1", master_port=port)
        env = {**launcher.environment(threads=1), "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen(cmd, env=env, cwd=work, stdout=open(work / "out.log", "w"),  # noqa: SIM115
                                      stderr=subprocess.STDOUT))
    return procs


def wait(procs: list[subprocess.Popen], tmp: Path, name: str) -> None:
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], (tmp / f"{name}1" / "out.log").read_text()[-2000:]


def test_two_nodes_pause_at_the_same_step_with_a_checkpoint(tmp_path):
    procs = start_two_nodes(tmp_path, "node")
    deadline = time.monotonic() + 180
    while not any(e["type"] == "progress" and e["step"] >= 20 for e in event_list(tmp_path / "node0")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no training"
        time.sleep(0.2)
    (tmp_path / "node1" / "pause").touch()  # only node rank 1's agent heard the platform so far
    wait(procs, tmp_path, "node")

    host = event_list(tmp_path / "node0")
    total = next(e for e in host if e["type"] == "started")["total_steps"]
    paused = [json.loads((tmp_path / f"node{r}" / "paused.json").read_text()) for r in (0, 1)]
    step = paused[0]["step"]
    assert paused[1]["step"] == step and step % 10 == 0 and 20 < step < total
    assert not any(e["type"] == "finished" for e in host)
    (ckpt,) = [e for e in host if e["type"] == "checkpoint"]  # checkpoint_every 1000: only the pause's
    assert ckpt["step"] == step and max(e["step"] for e in host if e["type"] == "progress") == step
