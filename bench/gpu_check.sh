#!/usr/bin/env bash
# The NCCL/GPU path of the training runtime and the agent's hardware probe, on a machine
# with a CUDA GPU (run by hand; CI has no GPU). Writes its findings to $OUT (or ./gpu-check).
set -uo pipefail
OUT=${OUT:-gpu-check}; mkdir -p "$OUT"
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
$PY - <<'PYEOF' | tee "$OUT/hardware.json"
import json, os, sys
sys.path.insert(0, os.getcwd())
from workers.agent import hardware
hw = hardware.detect(".")
hw["benchmark_tflops_fp32_matmul"] = hardware.benchmark_tflops(seconds=1.0, size=4096)
print(json.dumps(hw, indent=1))
PYEOF
run() {  # $1 workdir, $2 extra spec JSON
  mkdir -p "$1"
  $PY - "$1" "$2" <<'PYEOF'
import json, sys
work, extra = sys.argv[1], json.loads(sys.argv[2])
spec = {"template": "tabular-classifier", "params": {"epochs": 40, "batch_size": 64, "learning_rate": 0.001,
        "hidden_units": 256, "hidden_layers": 2, "dropout": 0.0, "checkpoint_every": 50, "seed": 0},
        "dataset": {"kind": "sample", "name": "breast-cancer"}, "workdir": work, "backend": "nccl", **extra}
json.dump(spec, open(f"{work}/spec.json", "w"))
PYEOF
  local t0=$(date +%s.%N)
  OMP_NUM_THREADS=4 $PY -m torch.distributed.run --standalone --nproc-per-node 1 \
    -m workers.training.run "$1/spec.json" > "$1/train.log" 2>&1
  local rc=$?
  echo "$1 rc=$rc wall=$(python3 -c "import time;print(round(time.time()-$t0,1))") s"
  tail -n 3 "$1/train.log"
}
run /tmp/gpu-full '{}' | tee "$OUT/full.txt"
run /tmp/gpu-resume '{"resume_from": "/tmp/gpu-full/checkpoints/step-0000050.pt"}' | tee "$OUT/resume.txt"
cp /tmp/gpu-full/events.jsonl "$OUT/full-events.jsonl"; cp /tmp/gpu-resume/events.jsonl "$OUT/resume-events.jsonl"
$PY - <<'PYEOF' | tee "$OUT/summary.txt"
import json
def last(p):
    return [json.loads(l) for l in open(p)][-1]
a, b = last("/tmp/gpu-full/events.jsonl"), last("/tmp/gpu-resume/events.jsonl")
print("full:   ", a["type"], a.get("metric"), a.get("value"), a.get("sha256"))
print("resumed:", b["type"], b.get("metric"), b.get("value"), b.get("sha256"))
print("resume bitwise identical on GPU:", a.get("param_digests") == b.get("param_digests"))
PYEOF
