"""What this machine has, measured rather than claimed."""

from __future__ import annotations

import os
import platform
import shutil
import time


def _ram_gb() -> int:
    try:
        return max(1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024**3)
    except (ValueError, OSError, AttributeError):
        return 1


def detect(workdir: str) -> dict:
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": props.name,
                         "memory_gb": round(props.total_memory / 1024**3)})
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if gpus else None,
        "gpus": gpus,
        "gpu_count": len(gpus),
        "gpu_model": gpus[0]["name"] if gpus else "cpu",
        "cpu_cores": os.cpu_count() or 1,
        "ram_gb": _ram_gb(),
        "disk_free_gb": shutil.disk_usage(workdir).free // 1024**3,
    }


def benchmark_tflops(seconds: float = 0.5, size: int = 1024) -> float:
    """Dense float32 matrix-multiply throughput: on the first GPU when there is one,
    else on the CPU with the threads this process may use."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.matmul(a, b)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        runs += 1
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return round(2 * size**3 * runs / elapsed / 1e12, 4)
