"""Starts one assignment's training processes with torch.distributed and watches them.

The training runs as a separate command in its own process group, so that cancelling
kills every rank and a hung shutdown cannot outlive the watchdog (DESIGN.md pitfalls).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

from . import sandbox as sandboxing
from .peer_firewall import PeerFirewall
from .rank_logs import PREFIX_TEMPLATE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def command(*, spec_path: Path, nnodes: int, node_rank: int, nproc_per_node: int,
            master_addr: str, master_port: int, standalone: bool = False) -> list[str]:
    if standalone:
        # DiLoCo: this node's ranks form their own group (DDP inside the node); the nodes
        # meet only in the outer synchronisation, at master_addr:master_port, which the
        # runtime joins itself. A rank that fails restarts and joins again at the next
        # outer step, except on node rank 0, which hosts that exchange.
        return [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(nproc_per_node),
            "--max-restarts", "0" if node_rank == 0 else "1",
            *_tee(spec_path), "-m", "workers.training.run", str(spec_path),
        ]
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(nnodes), "--node-rank", str(node_rank),
        "--nproc-per-node", str(nproc_per_node),
        # Static rendezvous: node rank 0 hosts the store at its advertised address.
        "--master-addr", master_addr, "--master-port", str(master_port),
        # The platform re-places work on node loss; a local restart only helps one node.
        "--max-restarts", "1" if nnodes == 1 else "0",
        *_tee(spec_path), "-m", "workers.training.run", str(spec_path),
    ]


def _tee(spec_path: Path) -> list[str]:
    """Each rank's stdout and stderr copied to torchrun's own, every line prefixed with its
    global rank (rank_logs.PREFIX_TEMPLATE); the files go to the job's folder, which the
    sandbox lets the ranks write and its disk limit covers."""
    return ["--log-dir", str(spec_path.parent / "rank-logs"), "--tee", "3"]


def sandboxed(cmd: list[str], env: dict[str, str], *, job_dir: Path, nnodes: int,
              limits: sandboxing.Limits | None = None, firewall: PeerFirewall | None = None
              ) -> tuple[list[str], dict[str, str], sandboxing.Sandbox]:
    """The command run inside the assignment's sandbox (workers/agent/sandbox.py): a
    single-node job gets loopback only (build its command with master_addr 127.0.0.1), a
    multi-node one the host's network, which its peers reach it through: confined to them
    by `firewall` ("peers" mode), unfiltered without one (the built-in templates only)."""
    network = "loopback" if nnodes == 1 else "peers" if firewall is not None else "host"
    box = sandboxing.Sandbox(job_dir=job_dir, limits=limits or sandboxing.Limits(),
                             network=network, firewall=firewall if network == "peers" else None)
    if nnodes == 1:
        env = {**env, "GLOO_SOCKET_IFNAME": "lo"}
    wrapped, outer_env = box.wrap(cmd, env)
    return wrapped, outer_env, box


def environment(*, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        # torchrun sets 1 per process; set it explicitly so CPUs are not oversubscribed.
        "OMP_NUM_THREADS": str(threads),
        # Restarts after a rank dies fail without this (pytorch#135712).
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "PYTHONUNBUFFERED": "1",
        "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": PREFIX_TEMPLATE,
    })
    # The training runtime is part of this package: make sure the child can import it.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


async def start(cmd: list[str], env: dict[str, str], cwd: Path, *,
                split_streams: bool = False) -> asyncio.subprocess.Process:
    """The ranks' output piped: stdout and stderr apart with `split_streams` (both must be
    read then), else stderr merged into stdout."""
    return await asyncio.create_subprocess_exec(
        *cmd, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if split_streams else asyncio.subprocess.STDOUT,
        start_new_session=True)


async def stop(process: asyncio.subprocess.Process, *, grace_s: float = 10) -> None:
    """SIGTERM the whole process group, then SIGKILL what is left."""
    if process.returncode is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(process.wait(), wait)
            return
        except TimeoutError:
            continue
