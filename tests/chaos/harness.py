"""What the chaos suite injects, and the processes it injects it into: the platform of
tests/stack.py (daphne, a Celery worker with beat, real agents), a Redis server of the
suite's own that it restarts (tests/stack.py's RedisServer, never the machine's shared
one), and the hardhat node."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..stack import RedisServer, Stack  # noqa: F401  (RedisServer: the suite uses it from here)


def pids_working_in(directory: Path) -> list[int]:
    """Processes whose working directory lies under `directory`: an agent's training ranks,
    which run in a session of their own (started in the assignment's folder)."""
    found, root = [], str(directory.resolve())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + os.sep):
            found.append(int(entry))
    return found


# Known upstream defects that make a Celery worker exit on its own, each identified by the
# line it logs. Only these are restarted without failing the run (tests/chaos/test_chaos.py
# checks each against the faults injected). Documented in docs/BENCHMARKS.md ("Chaos").
DEFECTS = {
    # celery 5.7.0: after a broker connection error the consumer closes the broken
    # connection, and restoring the unacknowledged messages then finds its transport gone.
    # Caused by a Redis restart.
    "celery-5.7.0-hostname": (re.compile(r"CRITICAL/MainProcess\] Unrecoverable error: AttributeError\("
                                         r"[\"']'NoneType' object has no attribute 'hostname'"),
                              "redis_restart"),
}


def defect_of(log: list[str]) -> str | None:
    """The known defect a worker's log shows, if any."""
    for name, (line, _) in DEFECTS.items():
        if any(line.search(x) for x in log):
            return name
    return None


@dataclass
class Exit:
    """A process that exited on its own, which the harness restarted as a supervisor would."""

    process: str
    at: float
    returncode: int
    why: str  # its log's first CRITICAL line (else its first ERROR line)
    defect: str | None  # the known upstream defect its log shows (DEFECTS), else None


@dataclass
class Injection:
    kind: str  # agent_sigkill, agent_vanish, worker_sigkill_dispatch, worker_sigkill_settlement, ...
    at: float  # wall clock (time.time())
    target: str
    assignments: list[int] = field(default_factory=list)  # what the node was running


class ChaosStack(Stack):
    """tests/stack.py's platform with restarts: every process can be killed and started again
    (a restarted agent keeps its work folder and outbox, as a rebooted machine would)."""

    def __init__(self, tmp: Path, *, redis_url: str, heartbeat_timeout_s: int, env: dict[str, str]):
        # Workers as docker-compose.yml runs them: one for matching, dispatch and verification
        # (with beat here), and the single chain sender.
        super().__init__(tmp, heartbeat_timeout_s=heartbeat_timeout_s, redis_url=redis_url,
                         queues="default,dispatch,verify")
        self.env.update(env)
        self.generation: dict[str, int] = {}
        self.agent_procs: dict[str, subprocess.Popen] = {}
        self.injections: list[Injection] = []
        self.exits: list[Exit] = []

    def _next(self, name: str) -> str:
        self.generation[name] = self.generation.get(name, 0) + 1
        return f"{name}-{self.generation[name]}"

    def _spawn_env(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2], env={**self.env, **env},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        self.log_names.append(name)
        return proc

    # --- agents ------------------------------------------------------------------------
    def chaos_agent(self, name: str, token: str, *, faults: str = "") -> subprocess.Popen:
        """Starts (or restarts) agent `name` in its own work folder."""
        env = {"COMPUTEMESH_FAULTS": faults} if faults else {}
        proc = self._spawn_env(self._next(name), [
            sys.executable, "-m", "workers.agent", "--server", self.base, "--token", token,
            "--workdir", str(self.tmp / name), "--plain", "--heartbeat", "1",
            "--advertise-addr", "127.0.0.1", *(["--allow-test-faults"] if faults else [])], env)
        self.agent_procs[name] = proc
        return proc

    def kill_agent(self, name: str, *, running: list[int]) -> None:
        """The machine dies: the agent and its training ranks, SIGKILLed at once."""
        proc = self.agent_procs[name]
        targets = pids_working_in(self.tmp / name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=20)
        self.injections.append(Injection("agent_sigkill", time.time(), name, running))

    def reap_training(self, name: str) -> None:
        """After a vanish: nothing of that machine may run on (the agent killed its ranks;
        this makes sure of it)."""
        for pid in pids_working_in(self.tmp / name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # --- the platform's processes ------------------------------------------------------
    WORKERS = {"celery": {}, "chain": {"queues": "chain", "beat": False, "concurrency": 1}}

    def start(self) -> ChaosStack:
        super().start()
        self.generation["celery"] = 1
        self.worker(self._next("chain"), **self.WORKERS["chain"])
        return self

    def _current(self, which: str) -> str:
        gen = self.generation[which]
        return which if which == "celery" and gen == 1 else f"{which}-{gen}"  # Stack.start's is "celery"

    def restart_worker(self, which: str, kind: str) -> None:
        """SIGKILL a Celery worker (`celery`, with beat in it, or `chain`) and start a new one."""
        name = self._current(which)
        self.kill(name)
        self.injections.append(Injection(kind, time.time(), name))
        time.sleep(1.0)
        self.worker(self._next(which), **self.WORKERS[which])

    def supervise(self) -> None:
        """Start again a worker that exited on its own, as docker-compose's `restart:
        unless-stopped` does in production, and write the exit down for the figures. Seen:
        celery 5.7.0's worker can exit when the broker restarts under it ("Unrecoverable
        error: AttributeError(... 'hostname')": after a connection error it closes the broken
        connection, and restoring the unacknowledged messages then finds its transport gone)."""
        for which in self.WORKERS:
            name = self._current(which)
            proc = self.procs[name]
            if proc.poll() is None:
                continue
            log = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
            errors = ([line for line in log if "CRITICAL" in line]
                      or [line for line in log if "ERROR" in line] or ["(none logged)"])
            self.exits.append(Exit(name, time.time(), proc.returncode, errors[0][:300], defect_of(log)))
            self.worker(self._next(which), **self.WORKERS[which])

    def restart_daphne(self) -> None:
        """SIGKILL the ASGI server while the agents are connected, then start it again on the
        same port; the agents reconnect and resend what was not acknowledged."""
        name = f"daphne-{self.generation['daphne']}" if self.generation.get("daphne") else "daphne"
        self.kill(name)
        self.injections.append(Injection("daphne_sigkill", time.time(), name))
        self._spawn(self._next("daphne"), [sys.executable, "-m", "daphne", "-b", self.bind, "-p",
                                           str(self.port), "webapp.asgi:application"])
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.base + "/api/v1/templates/", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("daphne did not come back") from None
                time.sleep(0.2)

    def stop(self) -> None:
        super().stop()
        for name in self.agent_procs:
            self.reap_training(name)
