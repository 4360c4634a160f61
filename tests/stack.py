"""The real platform for integration tests: daphne, a Celery worker with beat, and provider
agents, each its own process, on the test database and a Redis database of their own.

Every test that starts one fails at teardown when a process's log holds a traceback, an
ERROR or CRITICAL line, or an `internal` answer to an agent, unless the test allowed it
(`Stack.allow`, for the faults it injects): the platform catches exceptions to stay up, so
without reading its logs a test passes over a bug that only the logs show."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis
from django.conf import settings

from .browser_support import ROOT, free_port, test_database_url
from .platform_logs import log_entries, shorten, watch

# A Stack runs its own Redis server unless STACK_REDIS_URL names one (or the test passes
# `redis_url`). A database number of a shared server is not enough: the channel layer's
# pub/sub channels span all databases, so two test sessions' platforms pushed to each
# other's agents (a start message for another session's "node 1" reached this one's).
SHARED_REDIS_URL = os.environ.get("STACK_REDIS_URL")
REDIS_URL = SHARED_REDIS_URL or "redis://127.0.0.1:6379/7"  # for tests that pass it explicitly


class RedisServer:
    """A redis-server on a free port, in a directory of its own. Append-only persistence,
    as production runs it, so that a restart keeps the broker's queued tasks."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.dir),
             "--logfile", str(self.dir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=1).ping():
                    return self
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")
            time.sleep(0.1)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: redis writes its append-only file and exits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, down_s: float = 2.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


class Stack:
    def __init__(self, tmp: Path, *, heartbeat_timeout_s: int = 6, bind: str = "127.0.0.1",
                 redis_url: str | None = SHARED_REDIS_URL, queues: str = "default,dispatch,verify"):
        self.tmp = tmp
        self.own_redis = RedisServer(tmp) if redis_url is None else None
        redis_url = redis_url or self.own_redis.url
        self.queues = queues  # the worker's; add "chain" where the escrow is on
        self.bind = bind  # 0.0.0.0: agents in network namespaces reach it through a bridge
        self.redis_url = redis_url
        # A folder per test and session (its tmp_path's, e.g. pytest-12-test_x0), kept for CI:
        # other test sessions on the machine run the same tests meanwhile, and each test's
        # logs are read at its teardown.
        self.logs = ROOT / "test-results" / "stack" / f"{tmp.parent.name}-{tmp.name}"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings_test",
            "DATABASE_URL": test_database_url(), "DATABASE_POOL_MIN": "1",
            "REDIS_URL": redis_url, "MEDIA_ROOT": str(settings.MEDIA_ROOT), "ESCROW_ENABLED": "0",
            "NODE_HEARTBEAT_TIMEOUT_S": str(heartbeat_timeout_s), "AGENT_HEARTBEAT_S": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_names: list[str] = []  # every process this stack started, restarts included
        self.allowed: list[tuple[re.Pattern, str]] = []
        watch(self)

    def allow(self, pattern: str, *, why: str) -> None:
        """Let log entries matching `pattern` (a regular expression searched in the entry:
        the line, with its traceback when it has one) pass the teardown check; `why` names
        the injected fault that causes them."""
        self.allowed.append((re.compile(pattern), why))

    def log_problems(self) -> list[str]:
        """The unexpected entries in this stack's logs, each as `log:line: text`."""
        found = []
        for name in dict.fromkeys(self.log_names):
            path = self.logs / f"{name}.log"
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            for lineno, entry in log_entries(lines):
                if not any(p.search(entry) for p, _ in self.allowed):
                    found.append(f"{name}.log:{lineno}: {shorten(entry)}")
        return found

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        self.log_names.append(name)
        return proc

    def start(self) -> "Stack":
        if self.own_redis is not None:
            self.own_redis.start()
        redis.Redis.from_url(self.redis_url).flushdb()
        self.daphne("daphne", self.port, wait=False)
        self.worker("celery")
        self.wait_web("daphne", self.port)
        return self

    def daphne(self, name: str, port: int, *, wait: bool = True) -> subprocess.Popen:
        """A web process (the stack starts one; tests of the web tier start more)."""
        proc = self._spawn(name, [sys.executable, "-m", "daphne", "-b", self.bind, "-p", str(port),
                                  "webapp.asgi:application"])
        if wait:
            self.wait_web(name, port)
        return proc

    def wait_web(self, name: str, port: int) -> None:
        deadline = time.monotonic() + 40
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/templates/", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"daphne did not start; see {self.logs / f'{name}.log'}") from None
                time.sleep(0.3)

    def worker(self, name: str, *, queues: str | None = None, beat: bool = True,
               concurrency: int = 2, python: str = sys.executable) -> subprocess.Popen:
        """A Celery worker on `queues` (the stack's by default), with beat in it when `beat`;
        `python` may be another environment's (an image's dependency set)."""
        periodic = ["-B", "--schedule", str(self.tmp / f"{name}-beat-schedule")] if beat else []
        return self._spawn(name, [python, "-m", "celery", "-A", "webapp", "worker", *periodic,
                                  "-Q", queues or self.queues, "--concurrency", str(concurrency),
                                  "--hostname", f"{name}@%h", "--loglevel", "INFO"])

    def agent(self, name: str, token: str, *, prefix: tuple[str, ...] = (), server: str | None = None,
              advertise: str = "127.0.0.1", faults: str = "") -> subprocess.Popen:
        """An agent process; `prefix` runs it elsewhere (e.g. `ip netns exec <ns>`), reaching
        the platform at `server` and advertising `advertise` to its peers. `faults` makes it
        misbehave on purpose (COMPUTEMESH_FAULTS, workers/training/faults.py)."""
        return self._spawn(name, [*prefix, sys.executable, "-m", "workers.agent", "--server",
                                  server or self.base, "--token", token, "--workdir",
                                  str(self.tmp / name), "--plain", "--heartbeat", "1",
                                  "--advertise-addr", advertise,
                                  *(["--allow-test-faults"] if faults else [])],
                           env={"COMPUTEMESH_FAULTS": faults})

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        """Kill a process and everything it started (an agent and its training ranks)."""
        proc = self.procs[name]
        os.killpg(proc.pid, sig)
        proc.wait(timeout=20)

    def stop(self) -> None:
        # SIGTERM to each process itself, not its group: a Celery worker then shuts down
        # warm and ends its pool itself; signalled with it, the pool's children died under
        # their tasks and the worker logged WorkerLostError (found by the log check).
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            try:  # whatever it left behind in its group
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.own_redis is not None:  # after the processes that use it
            self.own_redis.stop()

    def http(self, method: str, path: str, *, token: str | None = None, body=None, raw=False):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        if token:
            headers["Authorization"] = f"Token {token}"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                payload = r.read()
                return r.status, payload if raw else json.loads(payload or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


def wait_for(predicate, *, timeout: float, every: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
