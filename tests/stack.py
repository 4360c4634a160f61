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

import pytest
import redis
from django.conf import settings

from .browser_support import ROOT, free_port, test_database_url

# Overridable so that two test runs on one machine keep to their own Redis databases.
REDIS_URL = os.environ.get("STACK_REDIS_URL", "redis://127.0.0.1:6379/7")


class Stack:
    def __init__(self, tmp: Path, *, heartbeat_timeout_s: int = 6, bind: str = "127.0.0.1",
                 redis_url: str = REDIS_URL, queues: str = "default,dispatch,verify"):
        self.tmp = tmp
        self.queues = queues  # the worker's; add "chain" where the escrow is on
        self.bind = bind  # 0.0.0.0: agents in network namespaces reach it through a bridge
        self.redis_url = redis_url
        # A folder per test (its tmp_path's name), kept for CI: stacks of other test runs on
        # the machine write theirs meanwhile, and each test's logs are read at its teardown.
        self.logs = ROOT / "test-results" / "stack" / tmp.name
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
        _stacks.append(self)

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
                    text = entry if len(entry) < 2000 else f"{entry[:500]}\n  …\n{entry[-1200:]}"
                    found.append(f"{name}.log:{lineno}: {text}")
        return found

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        self.log_names.append(name)
        return proc

    def start(self) -> "Stack":
        redis.Redis.from_url(self.redis_url).flushdb()
        self._spawn("daphne", [sys.executable, "-m", "daphne", "-b", self.bind, "-p",
                               str(self.port), "webapp.asgi:application"])
        self.worker("celery")
        deadline = time.monotonic() + 40
        while True:
            try:
                with urllib.request.urlopen(self.base + "/api/v1/templates/", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"daphne did not start; see {self.logs / 'daphne.log'}") from None
                time.sleep(0.3)
        return self

    def worker(self, name: str, *, queues: str | None = None, beat: bool = True,
               concurrency: int = 2) -> subprocess.Popen:
        """A Celery worker on `queues` (the stack's by default), with beat in it when `beat`."""
        periodic = ["-B", "--schedule", str(self.tmp / f"{name}-beat-schedule")] if beat else []
        return self._spawn(name, [sys.executable, "-m", "celery", "-A", "webapp", "worker", *periodic,
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
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

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


# A log entry that fails the test unless allowed: a traceback, a record at ERROR or CRITICAL
# (Django's "… ERROR name: …", Celery's "[…: ERROR/MainProcess] …"), or an agent told that
# its messages were not applied because the platform failed ("internal": the server logs
# the cause; the agent logs "platform says: not applied").
PROBLEM = re.compile(r"Traceback \(most recent call last\)|\b(ERROR|CRITICAL)\b|"
                     r"platform says: not applied|\"code\": \"internal\"")
_TRACEBACK_BODY = ("  ", "\t", "Traceback", "During handling", "The above exception")


def log_entries(lines: list[str]):
    """(line number, text) of each problem in a log; a line followed by a traceback, or a
    traceback, is one entry up to and including its exception's line, chained exceptions
    ("During handling of the above exception …") included."""
    i = 0
    while i < len(lines):
        if not PROBLEM.search(lines[i]):
            i += 1
            continue
        j = i + 1
        if "Traceback (most recent call last)" in lines[i] or (
                j < len(lines) and lines[j].startswith("Traceback")):
            while True:
                while j < len(lines) and (lines[j].startswith(_TRACEBACK_BODY) or not lines[j].strip()):
                    j += 1
                j = min(j + 1, len(lines))  # the exception's own line
                k = j
                while k < len(lines) and not lines[k].strip():
                    k += 1
                if not (k < len(lines) and lines[k].startswith(_TRACEBACK_BODY[3:])):
                    break
                j = k  # an exception chained to it: the same entry
        yield i + 1, "\n".join(lines[i:j])
        i = j


_stacks: list[Stack] = []


@pytest.fixture(autouse=True)
def platform_logs_clean():
    """Fails the test at teardown on an unexpected problem in the logs of any Stack it
    started (after the Stack's own teardown: this fixture is set up first)."""
    _stacks.clear()
    yield
    stacks, problems = list(_stacks), []
    _stacks.clear()
    for stack in stacks:
        problems += stack.log_problems()
    if problems:
        pytest.fail(f"{len(problems)} unexpected problem(s) in the platform's logs "
                    f"(allow an injected fault with Stack.allow):\n\n"
                    + "\n\n".join(problems[:20]), pytrace=False)
