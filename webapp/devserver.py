"""The embedded development server: `python -m webapp.devserver`.

One command runs the whole platform on a laptop, on the embedded defaults of
webapp/settings.py (SQLite file, in-memory channel layer, in-process Celery broker).
It turns DEBUG on (this is the only place that does) and supervises child processes:

- each child's output is forwarded line by line with its name as a prefix;
- Ctrl-C or SIGTERM stops every child (SIGTERM to its process group, then SIGKILL after
  a grace period) and exits 0;
- a child that dies on its own stops the others and makes the runner exit non-zero, so a
  half-running platform never looks healthy.

The children are the entries of `child_commands()`: the ASGI server, a Celery worker
with beat (its broker is a folder under var/, so the processes share it without Redis),
and two provider agents on this computer, which are CPU nodes and say so. The chain is an
in-process EVM served by this process over JSON-RPC (`start_chain`).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
AGENT_HEARTBEAT_S = "2"


def demo_agents() -> list[dict]:
    """Register the two local CPU nodes and fetch fresh tokens for their agents."""
    tokens = VAR / "demo-agents.json"
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
    escrow_off = os.environ.get("ESCROW_ENABLED", "1").lower() in ("0", "false", "no")
    if os.environ.get("CHAIN_RPC_URL") or escrow_off:
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


def child_commands(*, host: str, port: int, agents: list[dict] | None = None) -> list[Child]:
    """What the embedded platform runs."""
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
        children.append(Child(agent["name"], [
            python, "-m", "workers.agent", "--server", server, "--token", agent["token"],
            "--workdir", str(VAR / "agents" / agent["name"]), "--heartbeat", AGENT_HEARTBEAT_S,
            "--advertise-addr", "127.0.0.1", "--plain"]))
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


class Supervisor:
    def __init__(self, children: list[Child], out: IO[str]):
        self.children = children
        self.out = out
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self._lock = threading.Lock()
        self._width = max(len(c.name) for c in [*children, Child("devserver", [])])
        self.stopping = threading.Event()

    def say(self, name: str, line: str) -> None:
        with self._lock:
            self.out.write(f"{name:>{self._width}} | {line.rstrip()}\n")
            self.out.flush()

    def _pump(self, name: str, stream: IO[str]) -> None:
        for line in stream:
            self.say(name, line)
        stream.close()

    def start(self) -> None:
        for child in self.children:
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **child.env}
            # Each child leads its own process group: the terminal's Ctrl-C reaches only
            # this runner, which then stops the children (and their children) in order.
            proc = subprocess.Popen(
                child.argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
            )
            self.procs[child.name] = proc
            threading.Thread(target=self._pump, args=(child.name, proc.stdout),
                             daemon=True, name=f"pump-{child.name}").start()

    def first_exited(self) -> tuple[str, int] | None:
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                return name, code
        return None

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        self.stopping.set()
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("devserver", f"{name} did not stop within {grace:.0f} s; killing it")
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        # Also reap anything a child left in its group after it exited itself.
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

    # Agents and the server agree on the heartbeat; starts not acted on are resent that often.
    os.environ.setdefault("AGENT_HEARTBEAT_S", AGENT_HEARTBEAT_S)
    ensure_port_free(args.host, args.port)
    agents = prepare(with_agents=not args.no_agents)
    children = child_commands(host=args.host, port=args.port, agents=agents)
    supervisor = Supervisor(children, sys.stdout)

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
        supervisor.say("devserver", f"starting {', '.join(c.name for c in children)} "
                                    f"(DEBUG={os.environ['DEBUG']}); Ctrl-C stops")
        supervisor.start()
        started = time.monotonic()
        announced = False
        while not requested:
            exited = supervisor.first_exited()
            if exited is not None:
                name, code = exited
                supervisor.say("devserver", f"{name} exited unexpectedly (code {code}); "
                                            "stopping the others")
                supervisor.stop()
                return code if code > 0 else 1
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
