"""computemesh-agent: run jobs from the ComputeMesh platform on this machine.

    computemesh-agent register --code cmr_… --url https://computemesh.example   (once)
    computemesh-agent --server https://computemesh.example [--token cmn_…]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from ..training import faults as test_faults
from . import __version__, hardware, peer_firewall, register, sandbox
from .agent import Agent, TokenRefused
from .display import Display
from .run_assignment import STALL_TIMEOUT_S, STARTUP_GRACE_S


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="computemesh-agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="platform URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--token", default=os.environ.get("COMPUTEMESH_AGENT_TOKEN"),
                   help="the node's agent token (or COMPUTEMESH_AGENT_TOKEN; default: the one "
                        "`computemesh-agent register` saved in the workdir)")
    p.add_argument("--workdir", type=Path, default=Path.home() / ".computemesh-agent",
                   help="where datasets, checkpoints and the outbox live")
    p.add_argument("--nproc-per-node", type=int, default=None,
                   help="training processes per node (default: what each job asks for)")
    p.add_argument("--advertise-addr", default=None,
                   help="address other nodes reach this one at for multi-node jobs")
    p.add_argument("--heartbeat", type=float, default=5.0, help="seconds between heartbeats")
    p.add_argument("--stall-timeout", type=float,
                   default=os.environ.get("AGENT_STALL_TIMEOUT_S") or STALL_TIMEOUT_S,
                   help="seconds without any sign of progress from a job's ranks on this node "
                        f"before they are stopped as hung (or AGENT_STALL_TIMEOUT_S; default "
                        f"{STALL_TIMEOUT_S:g})")
    p.add_argument("--startup-grace", type=float,
                   default=os.environ.get("AGENT_STARTUP_GRACE_S") or STARTUP_GRACE_S,
                   help="seconds a job's ranks may take to import torch and form their process "
                        "group before the stall timeout applies (or AGENT_STARTUP_GRACE_S; "
                        f"default {STARTUP_GRACE_S:g}; raise it on machines slow to start)")
    p.add_argument("--sandbox", choices=sandbox.MODES, default="custom",
                   help="which jobs' training runs inside the sandbox (bubblewrap; "
                        "docs/tasks.md): 'custom' (default) consumers' own code only, 'all' the "
                        "built-in templates too. Consumers' code never runs outside it")
    p.add_argument("--sandbox-memory-gb", type=float, default=None,
                   help="memory limit of one job's sandbox (default 16)")
    p.add_argument("--sandbox-disk-gb", type=float, default=None,
                   help="disk limit of one job's folder (default 128)")
    p.add_argument("--sandbox-processes", type=int, default=None,
                   help="processes and threads of one job's sandbox (default 1024)")
    p.add_argument("--sandbox-wall-hours", type=float, default=None,
                   help="wall time of one job's sandbox (default 168)")
    p.add_argument("--plain", action="store_true", help="plain log lines, no live bars")
    p.add_argument("--allow-test-faults", action="store_true",
                   help=f"run with the test-only faults in {test_faults.ENV} (tests only; "
                        "production platforms refuse such agents)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = p.parse_args(argv)
    parts = urlsplit(args.server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        p.error(f"--server must be an http(s) URL, not {args.server!r}")
    if not args.token:
        args.token = register.read_token(args.workdir)
    if not args.token:
        p.error("--token is required (or set COMPUTEMESH_AGENT_TOKEN, or run "
                "`computemesh-agent register --code …` first)")
    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        p.error("--nproc-per-node must be at least 1")
    if args.heartbeat <= 0:
        p.error("--heartbeat must be positive")
    if args.stall_timeout <= 0:
        p.error("--stall-timeout must be positive")
    if args.startup_grace <= 0:
        p.error("--startup-grace must be positive")
    try:
        faults = test_faults.from_env()
    except test_faults.FaultSpecError as exc:
        p.error(f"{test_faults.ENV}: {exc}")
    if faults.any and not args.allow_test_faults:
        p.error(f"{test_faults.ENV} is set ({faults.as_dict()}): it makes this agent misbehave on "
                "purpose and is for tests only; unset it, or pass --allow-test-faults in a test")
    return args


def _default_addr(server: str) -> str:
    """The local address that routes to the platform: what peers most likely reach."""
    host = urlsplit(server).hostname or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


async def _main(args: argparse.Namespace, display: Display) -> int:
    args.workdir.mkdir(parents=True, exist_ok=True)
    display.log(f"ComputeMesh agent {__version__} — detecting hardware …")
    hw = await asyncio.to_thread(hardware.detect, str(args.workdir))
    kind = (f"{hw['gpu_count']}× {hw['gpu_model']}" if hw["gpu_count"]
            else f"CPU node ({hw['cpu_cores']} cores; no GPU)")
    display.log(f"  {kind}, {hw['ram_gb']} GB RAM, {hw['disk_free_gb']} GB free disk")
    tflops = await asyncio.to_thread(hardware.benchmark_tflops)
    display.log(f"  benchmark: {tflops:.3f} TFLOP/s float32 matmul")
    sandbox_ok = await asyncio.to_thread(sandbox.available)
    scope = "every job" if args.sandbox == "all" else "consumers' own code"
    display.log(f"  sandbox: {'bubblewrap' if sandbox_ok else 'UNAVAILABLE (apt-get install bubblewrap)'}"
                f", for {scope}")
    for gone in await asyncio.to_thread(peer_firewall.remove_stale):
        display.log(f"  removed a dead sandbox's {gone}")
    peers_ok, why_not = await asyncio.to_thread(peer_firewall.probe)
    display.log("  multi-node sandboxes: " + ("confined to their peers (nftables, cgroup v2)" if peers_ok
                else f"CANNOT be confined to their peers ({why_not}): multi-node consumers' code "
                     "is not run here"))
    agent = Agent(server=args.server, token=args.token, workdir=args.workdir,
                  nproc_per_node=args.nproc_per_node,
                  advertise_addr=args.advertise_addr or _default_addr(args.server),
                  heartbeat_s=args.heartbeat, display=display, hardware=hw, benchmark_tflops=tflops,
                  stall_timeout_s=args.stall_timeout, startup_grace_s=args.startup_grace,
                  sandbox=sandbox.Settings(
                      mode=args.sandbox, available=sandbox_ok, peer_firewall=sandbox_ok and peers_ok,
                      limits=sandbox.Limits.from_options(
                          memory_gb=args.sandbox_memory_gb, processes=args.sandbox_processes,
                          disk_gb=args.sandbox_disk_gb, wall_h=args.sandbox_wall_hours)))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(agent.shutdown()))
    display.log(f"  connecting to {agent.ws_url}")
    try:
        await agent.run_forever()
    except TokenRefused as exc:
        display.log(f"✖ {exc}. Check --token (rotate it on the node's page if it leaked).")
        return 2
    finally:
        agent.outbox.close()
    if agent.refused:
        display.log(f"✖ the platform refused this agent: {agent.refused}")
        return 3
    display.log("agent stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["register"]:
        return register.main(argv[1:])
    args = parse(argv)
    with Display(plain=args.plain or not sys.stdout.isatty()) as display:
        return asyncio.run(_main(args, display))
