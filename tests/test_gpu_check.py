"""The GPU check (bench/gpu_check.sh) as a test: the NCCL path of the training runtime and
the agent's hardware probe on a CUDA GPU. Skipped where torch sees no CUDA device (CI and
the development machines); run where a GPU is present (`pytest -m gpu`). Its findings from
a GPU machine are kept in docs/gpu-check/."""

import json
import os
import subprocess
import sys

import pytest

from .browser_support import ROOT

pytestmark = pytest.mark.gpu


def test_the_gpu_check_trains_with_nccl_and_resumes_bitwise_identically(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    out = tmp_path / "gpu-check"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], cwd=ROOT,
                          env={**os.environ, "OUT": str(out), "PY": sys.executable},
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    hardware = json.loads((out / "hardware.json").read_text())
    assert hardware["gpu_count"] >= 1 and hardware["benchmark_tflops_fp32_matmul"] > 0, hardware
    for run in ("full", "resume"):  # each run's line: "<workdir> rc=<exit status> …"
        assert " rc=0 " in (out / f"{run}.txt").read_text(), (out / f"{run}.txt").read_text()
    finished = [json.loads(x) for x in (out / "full-events.jsonl").read_text().splitlines()][-1]
    assert finished["type"] == "finished" and finished["metric"] == "accuracy" and finished["value"] > 0.9
    summary = (out / "summary.txt").read_text()
    assert "resume bitwise identical on GPU: True" in summary, summary
