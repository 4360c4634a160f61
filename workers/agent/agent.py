"""The agent's connection to the platform: hello, heartbeats, reconnects with backoff,
and an on-disk outbox resent after every reconnect until acknowledged."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from ..training import faults as test_faults
from ..training.faults import from_env as faults_from_env
from . import __version__
from .display import Display
from .outbox import Outbox
from .run_assignment import STALL_TIMEOUT_S, STARTUP_GRACE_S, AssignmentRun
from .runtime import runtime_name
from .sandbox import Settings

VANISH_EXIT_CODE = 75  # how the agent process ends when it vanished on purpose


class TokenRefused(Exception):
    pass


class Agent:
    def __init__(self, *, server: str, token: str, workdir: Path, nproc_per_node: int | None,
                 advertise_addr: str, heartbeat_s: float, display: Display, hardware: dict,
                 benchmark_tflops: float, faults: test_faults.Faults | None = None,
                 stall_timeout_s: float = STALL_TIMEOUT_S, startup_grace_s: float = STARTUP_GRACE_S,
                 sandbox: Settings | None = None):
        parts = urlsplit(server.rstrip("/"))
        scheme = "wss" if parts.scheme == "https" else "ws"
        self.ws_url = f"{scheme}://{parts.netloc}/ws/agent/"
        self.origin = Origin(f"{parts.scheme}://{parts.netloc}")
        self.http_base = f"{parts.scheme}://{parts.netloc}"
        self.token = token
        self.workdir = workdir
        self.nproc_per_node = nproc_per_node
        self.advertise_addr = advertise_addr
        self.heartbeat_s = heartbeat_s
        self.stall_timeout_s = stall_timeout_s  # a training group silent this long is stopped
        self.startup_grace_s = startup_grace_s  # ... unless it is still starting up
        # Which assignments run inside the sandbox, and whether this machine can build one.
        self.sandbox = sandbox if sandbox is not None else Settings()
        self.display = display
        self.hardware = hardware
        self.benchmark_tflops = benchmark_tflops
        # Test-only misbehaviour (COMPUTEMESH_FAULTS, workers/training/faults.py).
        self.faults = faults if faults is not None else test_faults.from_env()
        self.cpu_threads = os.cpu_count() or 1
        self.outbox = Outbox(workdir / "outbox.sqlite3")
        self.runs: dict[int, AssignmentRun] = {}
        self.ws: ClientConnection | None = None
        self._stopping = asyncio.Event()
        self._last_resend = 0.0
        self.refused: str | None = None  # why the platform will not have this agent

    # --- sending ------------------------------------------------------------------
    async def _send(self, message: dict) -> None:
        ws = self.ws
        if ws is None:
            return
        try:
            await ws.send(json.dumps(message))
        except ConnectionClosed:
            pass  # kept in the outbox; resent after the reconnect

    async def send_data(self, assignment: int, type_: str, **fields) -> None:
        """A message that must arrive: numbered per assignment, kept until acknowledged."""
        message = self.outbox.put_numbered(assignment, {"type": type_, "id": uuid.uuid4().hex, **fields})
        await self._send(message)

    def url(self, path: str) -> str:
        """Platform paths are relative: the agent reaches the platform at --server."""
        return path if path.startswith(("http://", "https://")) else self.http_base + path

    def forget(self, assignment: int) -> None:
        self.runs.pop(assignment, None)

    # --- receiving ----------------------------------------------------------------
    async def _on_message(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "ack":
            for message_id in message.get("ids", [message.get("ack")]):
                if message_id:
                    self.outbox.ack(message_id)
        elif kind == "welcome":
            keep = set(message.get("assignments", []))
            for assignment, run in list(self.runs.items()):
                if assignment not in keep:
                    await run.cancel("the platform no longer runs it here")
            self.display.log(f"● connected as node {message.get('node')} ({message.get('name', '')})")
        elif kind == "assignment.start":
            assignment = int(message["assignment"])
            if assignment in self.runs:
                return  # a resend after a reconnect: already running
            run = AssignmentRun(self, message)
            self.runs[assignment] = run
            self.display.log(f"↓ {run.label}: received, preparing")
            run.launch()
        elif kind == "assignment.pause":
            target = self.runs.get(int(message["assignment"]))
            if target is not None:
                target.pause()
        elif kind == "assignment.cancel":
            target = self.runs.get(int(message["assignment"]))
            if target is not None:
                await target.cancel(message.get("reason", "cancelled by the platform"))
        elif kind == "error":
            self.display.log(f"! platform says: {message.get('message')}")
            if message.get("code") == "faults_refused":  # reconnecting would not change that
                self.refused = str(message.get("message"))
                self._stopping.set()
                return
            if message.get("code") in ("out_of_order", "rate_limited", "internal"):
                # Something earlier was not applied: resend what is unacknowledged, in order
                # (after a pause when the platform asked us to slow down).
                now = asyncio.get_running_loop().time()
                if now - self._last_resend < 1.0:
                    return  # one resend a second, however many errors arrive
                self._last_resend = now
                if message.get("code") in ("rate_limited", "internal"):
                    await asyncio.sleep(1.0)
                for pending in self.outbox.pending():
                    await self._send(pending)

    # --- connection loop ----------------------------------------------------------
    def hello(self) -> dict:
        return {"type": "hello", "id": uuid.uuid4().hex, "agent_version": __version__,
                "hardware": self.hardware, "benchmark_tflops": self.benchmark_tflops,
                "nproc_per_node": self.nproc_per_node, "advertise_addr": self.advertise_addr,
                "running": sorted(self.runs), "unacked": self.outbox.assignments(),
                "steps": self.steps(),
                # The provider runtime code bundles may ask for (workers/runtimes.json).
                "runtime": runtime_name(),
                # Whether consumers' own code can run here (in the sandbox), and for which jobs.
                "sandbox": self.sandbox.as_dict(),
                # Test-only faults are announced: a production platform refuses such an agent.
                "faults": faults_from_env().as_dict()}

    def steps(self) -> dict[str, int]:
        """Each running assignment's last step on this node (its own ranks', not rank 0's)."""
        return {str(a): run.step for a, run in sorted(self.runs.items()) if run.step is not None}

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self._send({"type": "heartbeat", "id": uuid.uuid4().hex,
                              "running": sorted(self.runs), "unacked": self.outbox.assignments(),
                              "steps": self.steps()})

    async def run_forever(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            heartbeat = None
            try:
                async with websockets.connect(
                    self.ws_url, origin=self.origin, open_timeout=10, ping_interval=20,
                    additional_headers={"Authorization": f"Token {self.token}"},
                    max_size=8 * 1024 * 1024,
                ) as ws:
                    self.ws = ws
                    backoff = 1.0
                    await self._send(self.hello())
                    for message in self.outbox.pending():
                        await self._send(message)
                    heartbeat = asyncio.create_task(self._heartbeats())
                    async for raw in ws:
                        try:
                            await self._on_message(json.loads(raw))
                        except (ValueError, KeyError, TypeError) as exc:
                            self.display.log(f"! ignored a malformed message from the platform: {exc}")
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    raise TokenRefused("the platform refused this agent's token") from None
                self.display.log(f"○ platform answered {exc.response.status_code}; retrying")
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                self.display.log(f"○ disconnected ({exc.__class__.__name__}); "
                                 f"reconnecting in {backoff:.0f} s, {len(self.outbox)} messages queued")
            finally:
                self.ws = None
                if heartbeat is not None:
                    heartbeat.cancel()
            try:
                await asyncio.wait_for(self._stopping.wait(), backoff + random.uniform(0, 0.5))
            except TimeoutError:
                pass
            backoff = min(backoff * 2, 30.0)

    def vanish(self, step: int) -> None:
        """Fault injection (`vanish=F`: at a share F of a job's steps the machine dies).
        Every training process group is SIGKILLed and the agent exits on the spot: no
        result, no goodbye, no more heartbeats, the outbox left as it is on disk. The
        platform learns of it as of a dead machine, from the heartbeat timeout."""
        self.display.log(f"✖ fault injection: vanishing at step {step}")
        for run in self.runs.values():
            if run.process is not None and run.process.returncode is None:
                try:
                    os.killpg(run.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        os._exit(VANISH_EXIT_CODE)

    async def shutdown(self) -> None:
        self._stopping.set()
        for run in list(self.runs.values()):
            await run.cancel("the agent is shutting down")
        if self.ws is not None:
            await self.ws.close()
