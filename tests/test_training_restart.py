"""A one-node job's local restart, as the agent launches it (torch.distributed.run with a
static rendezvous and --max-restarts 1): a rank killed mid-run brings the group back up,
resumed from its last local checkpoint, and the run finishes. Before the runtime put each
attempt's keys under a prefix of its own, the restarted ranks read the dead attempt's gloo
addresses from torchrun's store and failed again or hung (about half the restarts here)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from workers.agent import launcher

from .training_runs import ROOT, event_list, tabular_spec

pytestmark = pytest.mark.integration


def ranks_of(torchrun_pid: int) -> list[int]:
    children = Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read_text().split()
    return sorted(int(pid) for pid in children)


def test_a_killed_rank_restarts_the_group_from_its_last_checkpoint(tmp_path):
    spec = {**tabular_spec(tmp_path, epochs=120, batch_size=8, checkpoint_every=40, seed=3),
            "pg_timeout_s": 60, "sync": {"mode": "ddp"}, "nnodes": 1, "node_rank": 0}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    cmd = launcher.command(spec_path=tmp_path / "spec.json", nnodes=1, node_rank=0, nproc_per_node=2,
                           master_addr="127.0.0.1", master_port=launcher.free_port())
    assert "--max-restarts" in cmd and cmd[cmd.index("--max-restarts") + 1] == "1"
    env = {**launcher.environment(threads=1), "PYTHONPATH": str(ROOT)}
    log = tmp_path / "out.log"
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=open(log, "w"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not any(e["type"] == "checkpoint" and e["step"] >= 80 for e in event_list(tmp_path)):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint at step 80 within 120 s"
            time.sleep(0.2)
        killed_at = max(e["step"] for e in event_list(tmp_path) if e["type"] == "checkpoint")
        ranks = ranks_of(proc.pid)
        assert len(ranks) == 2, f"ranks {ranks}: the run ended before the kill? make it longer"
        os.kill(ranks[-1], signal.SIGKILL)  # one of the two ranks
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, log.read_text()[-3000:]

    seen = event_list(tmp_path)
    started = [e for e in seen if e["type"] == "started"]
    assert len(started) == 2, [e["type"] for e in seen]
    # The restart resumes from a checkpoint at or after the one seen before the kill (rank 0
    # may have written another before the group noticed), never from 0.
    assert started[0]["step"] == 0 and started[1]["step"] >= killed_at > 0
    finished = [e for e in seen if e["type"] == "finished"]
    assert len(finished) == 1 and finished[0]["step"] == started[1]["total_steps"]
