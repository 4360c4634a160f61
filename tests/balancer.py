"""HAProxy in front of several web processes, as production runs it (deploy/haproxy.cfg).

The repository's file is used as it is, except for the listening port and the servers:
`server-template` resolves the compose service's replicas through Docker's DNS, here each
daphne is a `server` line on its own port. A stats socket tells the tests which process
holds how many connections."""

import re
import socket
import subprocess
import time
from pathlib import Path

from .browser_support import ROOT, free_port

HAPROXY = "/usr/sbin/haproxy"
CONFIG = ROOT / "deploy" / "haproxy.cfg"


class HAProxy:
    def __init__(self, tmp: Path, servers: dict[str, int], *, logs: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.metrics_port = free_port()  # HAProxy's Prometheus exporter
        self.servers = servers
        self.dir = tmp / "haproxy"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "stats.sock"
        self.logs = logs
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        text = CONFIG.read_text()
        lines = "\n".join(f"    server {name} 127.0.0.1:{port} check" for name, port in self.servers.items())
        text, bound = re.subn(r"(?m)^    bind :8080$", f"    bind 127.0.0.1:{self.port}", text)
        text, exporter = re.subn(r"(?m)^    bind \*:8405$", f"    bind 127.0.0.1:{self.metrics_port}", text)
        text, templated = re.subn(r"(?m)^    server-template .*$", lines, text)
        text, stats = re.subn(r"(?m)^global$", f"global\n    stats socket {self.socket} mode 600 level admin",
                              text)
        assert bound == exporter == templated == stats == 1, \
            "deploy/haproxy.cfg changed shape; update tests/balancer.py"
        return text

    def start(self, *, up: set[str] | None = None) -> "HAProxy":
        """Start it and wait until the servers `up` (all by default) pass their checks."""
        path = self.dir / "haproxy.cfg"
        path.write_text(self.config())
        log = open(self.logs / "haproxy.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while set(self.up()) != (set(self.servers) if up is None else up):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start; see {self.logs / 'haproxy.log'}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _ask(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            try:
                s.connect(str(self.socket))
            except OSError:
                return ""
            s.sendall(command.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """The backend's servers: name -> their `show stat` row (status, scur, ...)."""
        lines = self._ask("show stat").splitlines()
        if not lines:
            return {}
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {r["svname"]: r for r in rows if r.get("pxname") == "web" and r["svname"] in self.servers}

    def up(self) -> list[str]:
        return [name for name, row in self.stats().items() if row["status"] == "UP"]

    def sessions(self) -> dict[str, int]:
        """The connections each web process holds through the balancer now."""
        return {name: int(row["scur"] or 0) for name, row in self.stats().items()}
