"""The process group of one training run: set up in a namespace of its restart's own under
the job's secret, and the fixed-size digest exchange at its end (never pickle)."""

from __future__ import annotations

import hashlib
import hmac
import os
from datetime import timedelta

import torch
import torch.distributed as dist

DIGEST_BYTES = 32  # a SHA-256: each rank's fixed-size slot in the final digest exchange


def job_secret(spec: dict) -> bytes | None:
    """The per-job secret the platform gave this job's agents only (hex), if any."""
    value = spec.get("job_secret")
    return bytes.fromhex(value) if value else None


def store_prefix(secret: bytes | None, restart: str) -> str:
    """The rendezvous store's namespace for this restart. Under the job's secret its name
    cannot be guessed (the store lists no keys), so a stranger who reaches the store cannot
    plant the group's keys (gloo's peer addresses) for this job."""
    if secret is None:
        return f"computemesh/attempt_{restart}"
    tag = hmac.new(secret, b"computemesh-rdzv", hashlib.sha256).hexdigest()[:32]
    return f"computemesh/{tag}/attempt_{restart}"


def init_process_group(backend: str, *, timeout: timedelta, secret: bytes | None = None) -> None:
    """The group over torchrun's store, in a namespace of this restart's own.

    Under a static rendezvous (a node's ranks, or several nodes' over --master-addr) every
    rank is a client of the one store torchrun hosts for its whole life, and torch's env://
    rendezvous does not prefix its keys per attempt (it assumes a new store per restart).
    A group restarted after a rank died then read the dead ranks' gloo addresses: here
    8 of 15 restarts came up, 6 failed again, 1 hung in connectFullMesh."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or restart is None:
        dist.init_process_group(backend, timeout=timeout)
        return
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=dist.PrefixStore(store_prefix(secret, restart), store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                            timeout=timeout)


def gather_digests(own: bytes, *, group_size: int, device: torch.device) -> list[str]:
    """Every rank's 32-byte SHA-256, gathered as a fixed-shape uint8 tensor, hex-encoded.

    Never `all_gather_object`: it unpickles each rank's contribution, so a hostile peer's
    object ran its command in rank 0's process (issue 13). A peer can only fill its own 32
    bytes here, and they are only ever read as data."""
    if len(own) != DIGEST_BYTES:
        raise ValueError(f"a digest is {DIGEST_BYTES} bytes, not {len(own)}")
    mine = torch.tensor(list(own), dtype=torch.uint8, device=device)
    parts = [torch.zeros(DIGEST_BYTES, dtype=torch.uint8, device=device) for _ in range(group_size)]
    dist.all_gather(parts, mine)
    return [bytes(part.cpu().tolist()).hex() for part in parts]
