"""Checkpoints: written atomically, named by step, identified by their SHA-256."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

_NAME = re.compile(r"^step-(\d{7,})\.pt$")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(directory: Path, *, step: int, model, optimizer, meta: dict) -> tuple[Path, str]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:07d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({
        "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        **meta,
    }, tmp)
    os.replace(tmp, path)  # a reader never sees half a checkpoint
    return path, sha256_file(path)


def latest(directory: Path) -> Path | None:
    if not directory.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)))
    return found[-1][1] if found else None


def load(path: str | os.PathLike) -> dict:
    # A resume checkpoint may come from another provider: tensors and plain data only,
    # never arbitrary pickled objects.
    return torch.load(path, map_location="cpu", weights_only=True)
