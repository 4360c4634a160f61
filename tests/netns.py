"""Emulated wide-area links on one machine, for tests and benchmarks.

Each provider host is a network namespace with its own loopback and one interface, `eth0`,
the end of a veth pair whose other end is plugged into a bridge in the root namespace
(which holds the gateway address, where the platform listens). A `tc tbf` token bucket
limits each host's link in both directions (its eth0 egress and the bridge port's egress
towards it), so processes in different namespaces talk across a real, slow link.

The kernel here has no `netem`, so no latency can be injected: a benchmark adds it by
model (rounds of synchronisation × round-trip time) and says so.

Everything is created by the caller and removed by `down()` (also on errors): names are
unique per instance, so concurrent runs do not collide.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be created here (not root, or no CAP_NET_ADMIN)."""


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def _free_subnet() -> ipaddress.IPv4Network:
    used = _run("ip", "-4", "-o", "addr", "show").stdout
    for _ in range(100):
        a, b = secrets.randbelow(50) + 200, secrets.randbelow(256)
        if f"10.{a}.{b}." not in used:
            return ipaddress.ip_network(f"10.{a}.{b}.0/24")
    raise RuntimeError("no free 10.x.y.0/24 subnet")


class Hosts:
    def __init__(self, count: int, *, rate_mbit: float = 100, tag: str | None = None):
        self.count, self.rate_mbit = count, rate_mbit
        self.tag = tag or f"cm{secrets.token_hex(2)}"  # interface names stay under 15 chars
        self.bridge = f"{self.tag}br"
        self.net = _free_subnet()
        self.gateway = str(self.net.network_address + 1)
        self.names = [f"{self.tag}h{i}" for i in range(count)]
        self._created: list[tuple[str, str]] = []

    # --- lifecycle ----------------------------------------------------------------------
    def up(self) -> Hosts:
        try:
            self._add("netns", self.names[0], "ip", "netns", "add", self.names[0])
        except subprocess.CalledProcessError as exc:
            raise NetnsUnavailable(f"`ip netns add` is not permitted here: {exc.stderr.strip()}") from None
        try:
            self._add("link", self.bridge, "ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/{self.net.prefixlen}", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i, ns in enumerate(self.names):
                if i:
                    self._add("netns", ns, "ip", "netns", "add", ns)
                outside, inside = f"{self.tag}v{i}", f"{self.tag}p{i}"
                _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
                _run("ip", "link", "set", inside, "netns", ns)
                _run("ip", "-n", ns, "link", "set", inside, "name", "eth0")
                _run("ip", "link", "set", outside, "master", self.bridge)
                _run("ip", "link", "set", outside, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.addr(i)}/{self.net.prefixlen}", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                if self.rate_mbit:
                    self._limit(["-n", ns], "eth0")   # what the host sends
                    self._limit([], outside)           # what it receives
        except BaseException:
            self.down()
            raise
        return self

    def _add(self, kind: str, name: str, *cmd: str) -> None:
        _run(*cmd)
        self._created.append((kind, name))

    def _limit(self, where: list[str], dev: str) -> None:
        # Token bucket: the rate, a burst of a few packets, and a queue of at most 200 ms.
        _run("tc", *where, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{self.rate_mbit}mbit",
             "burst", "32kb", "latency", "200ms")

    def down(self) -> None:
        for ns in self.names:
            self.kill_all(self.names.index(ns))
        for kind, name in reversed(self._created):
            if kind == "netns":
                _run("ip", "netns", "del", name, check=False)  # its veth ends go with it
            else:
                _run("ip", "link", "del", name, check=False)
        self._created.clear()

    def __enter__(self) -> Hosts:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # --- using the hosts ----------------------------------------------------------------
    def addr(self, i: int) -> str:
        return str(self.net.network_address + 10 + i)

    def prefix(self, i: int) -> tuple[str, ...]:
        """Run a command on host i: `[*hosts.prefix(i), "python", …]`."""
        return ("ip", "netns", "exec", self.names[i])

    def pids(self, i: int) -> list[int]:
        out = _run("ip", "netns", "pids", self.names[i], check=False).stdout
        return [int(p) for p in out.split()]

    def kill_all(self, i: int) -> list[int]:
        """The machine dies: every process on host i, at once."""
        if not Path(f"/run/netns/{self.names[i]}").exists():
            return []
        pids = self.pids(i)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self.pids(i) and time.monotonic() < deadline:
            time.sleep(0.05)
        return pids

    def tx_bytes(self, i: int) -> int:
        """Bytes host i has sent on its link (IP packets with their headers)."""
        out = _run("ip", "netns", "exec", self.names[i], "cat", "/sys/class/net/eth0/statistics/tx_bytes")
        return int(out.stdout)
