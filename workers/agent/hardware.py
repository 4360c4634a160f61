"""What this machine has, measured rather than claimed."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time


def _ram_gb() -> int:
    try:
        return max(1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024**3)
    except (ValueError, OSError, AttributeError):
        return 1


def driver_in_proc(text: str) -> str | None:
    """The version in /proc/driver/nvidia/version's text: "... Kernel Module  535.104.05  ..."
    (the proprietary module) or "... Open Kernel Module for x86_64  550.54.15  ..."."""
    found = re.search(r"Kernel Module(?: for [\w-]+)?\s+([0-9][0-9.]*)", text)
    return found.group(1) if found else None


def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version ("550.54.15"), which consumers compare with what
    their code needs; None without one. The kernel module says it without starting a process;
    nvidia-smi is asked where /proc does not show it (some containers)."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8", errors="replace") as f:
            found = driver_in_proc(f.read())
        if found:
            return found
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()[0].strip() if out.strip() else ""
    return first if re.fullmatch(r"[0-9][0-9.]*", first) else None


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
        "driver": nvidia_driver() if gpus else None,
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
