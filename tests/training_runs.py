"""Real runs of the training runtime (torch.distributed.run, gloo) for the verification
tests and bench/verification.py: no platform, just the runtime's processes and files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tabular_spec(workdir: Path, **params) -> dict:
    return {"template": "tabular-classifier",
            "params": {"epochs": 4, "batch_size": 16, "learning_rate": 0.003, "hidden_units": 32,
                       "hidden_layers": 2, "dropout": 0.1, "checkpoint_every": 50, "seed": 0, **params},
            "dataset": {"kind": "sample", "name": "breast-cancer"}, "workdir": str(workdir),
            "backend": "gloo", "verify": {"replay_share": 0.1, "segments": 2}}


def train(spec: dict, *, nproc: int = 2, faults: str = "", timeout: float = 180) -> dict:
    """Run the runtime on `spec` with `nproc` ranks; returns its events by type (the
    checkpoints as a list, the rest the last of each)."""
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "COMPUTEMESH_FAULTS": faults}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               str(nproc), "-m", "workers.training.run", str(spec_path)]
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    # No second try: a rank that crashes (even inside torch's C++ runtime) fails the test
    # with the ranks' output, so that the crash is seen and fixed rather than absorbed.
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return read_events(workdir)


def event_list(workdir: Path) -> list[dict]:
    """The runtime's events so far, in order (none before the file exists)."""
    path = workdir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def read_events(workdir: Path) -> dict:
    out: dict = {"checkpoint": []}
    for line in (workdir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["type"] == "checkpoint":
            out["checkpoint"].append(event)
        else:
            out[event["type"]] = event
    return out


def train_nodes(spec: dict, *, nnodes: int = 2, faults: dict[int, str] | None = None,
                timeout: float = 240) -> list[Path]:
    """Run the runtime as `nnodes` nodes of one rank each (DDP across nodes: a torchrun per
    node, static rendezvous on loopback, as the agent launches them), each node in its own
    workdir under spec["workdir"]; `faults` by node rank. Returns the nodes' workdirs."""
    from workers.agent import launcher

    root, port = Path(spec["workdir"]), launcher.free_port()
    procs, dirs = [], []
    for node in range(nnodes):
        workdir = root / f"node{node}"
        workdir.mkdir(parents=True, exist_ok=True)
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps({**spec, "workdir": str(workdir), "nnodes": nnodes,
                                         "node_rank": node, "sync": {"mode": "ddp"}}))
        command = launcher.command(spec_path=spec_path, nnodes=nnodes, node_rank=node, nproc_per_node=1,
                                   master_addr="127.0.0.1", master_port=port)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
               "COMPUTEMESH_FAULTS": (faults or {}).get(node, "")}
        procs.append(subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
        dirs.append(workdir)
    outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"training failed ({proc.returncode}):\n{output[-3000:]}")
    return dirs
