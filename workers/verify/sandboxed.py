"""The verifier's checks of a consumer's own task, run inside the provider sandbox.

Replaying or evaluating a code bundle executes the consumer's code, on the platform's
verify worker this time: `check_attempt_sandboxed` runs `check_attempt` in a child
process inside the same bubblewrap sandbox the agents use (workers/agent/sandbox.py):
loopback only, the files it needs (checkpoints, model, bundle, data) bound read-only, one
scratch folder writable, and the result read back as JSON without following links. A
template's check needs none of this and runs in-process as before.

    python -m workers.verify.sandboxed IN.json OUT.json   (the child; IN: {call, args})
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from workers.agent import sandbox as sandboxing

from .check import check_attempt, check_determinism, checkpoint_problem

TIMEOUT_S = 3600.0


def _inputs(plan: dict, dataset: dict) -> list[Path]:
    """Every file or folder the check reads (bound read-only into the sandbox)."""
    bundle = plan.get("bundle") or {}
    paths = [p for p in (plan.get("checkpoints") or {}).values() if p]
    paths += [plan.get("artifact"), plan.get("final_checkpoint"), plan.get("data_dir"),
              (plan.get("weights") or {}).get("path"),
              plan.get("path"), bundle.get("path"), bundle.get("archive"), dataset.get("path"),
              dataset.get("data_dir"), dataset.get("archive")]
    return sorted({Path(p).resolve() for p in paths if p and Path(p).exists()})


def _in_sandbox(call: str, args: dict, *, limits: sandboxing.Limits | None, timeout_s: float):
    """`call` (check_attempt or checkpoint_problem) with `args`, run in a child process
    inside the sandbox; its JSON result."""
    if not sandboxing.available():
        raise sandboxing.SandboxUnavailable(
            "the verifier cannot sandbox consumers' code here (bubblewrap missing or not permitted)")
    with tempfile.TemporaryDirectory(prefix="cm-verify-") as scratch:
        job = Path(scratch)
        (job / "in.json").write_text(json.dumps({"call": call, "args": args}))
        box = sandboxing.Sandbox(job_dir=job, limits=limits or sandboxing.Limits(wall_s=timeout_s),
                                 network="loopback",
                                 extra_ro=_inputs(args.get("plan") or args, args.get("dataset") or {}))
        root = str(Path(__file__).resolve().parents[2])
        env = {**{k: v for k, v in os.environ.items() if k.startswith(sandboxing.ENV_PREFIXES)},
               "PYTHONPATH": root, "PYTHONUNBUFFERED": "1",
               # The thread count this worker replays with: another one sums in another order.
               "OMP_NUM_THREADS": str(torch.get_num_threads())}
        cmd, outer_env = box.wrap([sys.executable, "-m", "workers.verify.sandboxed",
                                   str(job / "in.json"), str(job / "out.json")], env)
        try:
            done = subprocess.run(cmd, env=outer_env, cwd=job, capture_output=True, text=True,
                                  timeout=timeout_s + 60, start_new_session=True)
        finally:
            box.close()
        if done.returncode != 0:
            raise RuntimeError(f"the sandboxed check exited with {done.returncode}: "
                               f"{(done.stdout + done.stderr)[-2000:]}")
        with sandboxing.open_job_file(job, job / "out.json") as fh:
            return json.loads(fh.read(16 << 20))


def check_attempt_sandboxed(plan: dict, dataset: dict, *, limits: sandboxing.Limits | None = None,
                            timeout_s: float = TIMEOUT_S) -> dict:
    """check_attempt's result; for a bundle's plan, computed inside the sandbox. Raises
    SandboxUnavailable when a bundle's code would have to run here without one."""
    if not plan.get("bundle"):
        return check_attempt(plan, dataset)
    result = _in_sandbox("check_attempt", {"plan": plan, "dataset": dataset},
                         limits=limits, timeout_s=timeout_s)
    if not isinstance(result, dict):
        raise RuntimeError("the sandboxed check wrote no result")
    return result


def check_determinism_sandboxed(plan: dict, dataset: dict, *, limits: sandboxing.Limits | None = None,
                                timeout_s: float = 900.0) -> dict:
    """check_determinism's result, computed inside the sandbox (it always runs a bundle's code)."""
    result = _in_sandbox("check_determinism", {"plan": plan, "dataset": dataset},
                         limits=limits, timeout_s=timeout_s)
    if not isinstance(result, dict) or not isinstance(result.get("deterministic"), bool):
        raise RuntimeError("the sandboxed determinism check wrote no result")
    return result


def checkpoint_problem_sandboxed(path: str, *, limits: sandboxing.Limits | None = None,
                                 timeout_s: float = 600.0, **kwargs) -> str | None:
    """checkpoint_problem's answer; for a bundle's job (building its model runs the
    consumer's code), computed inside the sandbox."""
    if not kwargs.get("bundle"):
        return checkpoint_problem(path, **kwargs)
    result = _in_sandbox("checkpoint_problem", {"path": path, **kwargs},
                         limits=limits, timeout_s=timeout_s)
    if result is not None and not isinstance(result, str):
        raise RuntimeError("the sandboxed checkpoint check wrote no answer")
    return result


def main(argv: list[str]) -> int:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))
    inputs = json.loads(Path(argv[1]).read_text())
    args = inputs["args"]
    result: dict | str | None
    if inputs["call"] == "checkpoint_problem":
        result = checkpoint_problem(args.pop("path"), **args)
    elif inputs["call"] == "check_determinism":
        result = check_determinism(args["plan"], args["dataset"])
    else:
        plan = args["plan"]
        # JSON made the steps' keys strings; the check looks them up as numbers.
        plan["checkpoints"] = {int(k): v for k, v in plan["checkpoints"].items()}
        if plan.get("commitments"):
            plan["commitments"] = {int(k): v for k, v in plan["commitments"].items()}
        result = check_attempt(plan, args["dataset"])
    Path(argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
