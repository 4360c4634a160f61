"""A multi-node sandbox's network (issue 16, the sandbox's "peers" mode): the host's network,
which its peers reach its ranks through, but its processes may open connections only to the
job's peers.

How: the sandbox runs in a cgroup v2 folder of its own, <cgroup2>/computemesh/job-J/a-A-P
(P: the agent's process id, as two agents on one host may be given the same assignment
number by two platforms in tests), and an nftables table per assignment
(`inet computemesh_aA_P`) filters what sockets of that
cgroup send. A destination on this host is let out but marked, and checked on input: it is
accepted only by a listener of the same job (any of its assignments here; two agents on one
host run two ranks of a job in tests) or as part of a connection already let in. Any other
destination must be one of the peers the platform named; the rest is refused (TCP with a
reset, anything else with an ICMP error). Needs root, the `nft` command and a cgroup2
mount under /sys/fs/cgroup (nft resolves cgroup paths from there); `probe` says whether this
machine has them, and the agent reports it in its hello (`sandbox.peer_firewall`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NFT = "nft"
CGROUP_FS = Path("/sys/fs/cgroup")  # nft resolves `socket cgroupv2` paths relative to it
GROUP = "computemesh"
TABLE_PREFIX = "computemesh_a"
# Another agent's sandbox on this host is being set up: its cgroup is empty for a moment.
STALE_AFTER_S = 120.0
_TABLE_LINE = re.compile(rf"^table inet ({TABLE_PREFIX}(\d+_\d+))$", re.M)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class FirewallError(RuntimeError):
    """The peers' firewall cannot be built for this assignment (said in its failure)."""


def cgroup2_mount(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or …/unified on a hybrid host)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        head, _, tail = line.partition(" - ")
        if tail.split(" ", 1)[0] == "cgroup2":
            return Path(head.split()[4])
    return None


def peer_addresses(values: list) -> tuple[Address, ...]:
    """The peers as IP addresses: they come from the platform and go into a firewall rule,
    so anything but an IP literal (a host name, a range, text with nft syntax) is refused."""
    out: list[Address] = []
    for value in values:
        try:
            address = ipaddress.ip_address(str(value).strip())
        except ValueError:
            raise FirewallError(f"peer address {str(value)[:64]!r} is not an IP address (the "
                                "sandbox lets its ranks reach IP addresses only)") from None
        if address.is_unspecified or address.is_multicast:
            raise FirewallError(f"peer address {address} cannot be a peer")
        if address not in out:
            out.append(address)
    return tuple(out)


def job_mark(job: int) -> int:
    """The packet mark of a job's traffic to this host's own addresses (one per job, so that
    two jobs' tables on one host leave each other's packets alone)."""
    return 0xC0000000 | (job & 0x3FFFFFFF)


def ruleset(*, table: str, job_path: str, job_level: int, assignment_path: str,
            assignment_level: int, mark: int, peers: tuple[Address, ...]) -> str:
    v4 = ", ".join(str(a) for a in peers if a.version == 4)
    v6 = ", ".join(str(a) for a in peers if a.version == 6)
    return f"""
table inet {table}
delete table inet {table}
table inet {table} {{
  set peers4 {{ type ipv4_addr; {f"elements = {{ {v4} }}" if v4 else ""} }}
  set peers6 {{ type ipv6_addr; {f"elements = {{ {v6} }}" if v6 else ""} }}
  chain out {{
    type filter hook output priority 0; policy accept;
    socket cgroupv2 level {assignment_level} "{assignment_path}" jump sandbox_out
  }}
  chain sandbox_out {{
    fib daddr type local meta mark set {mark:#010x} accept
    ip daddr @peers4 accept
    ip6 daddr @peers6 accept
    meta l4proto tcp reject with tcp reset
    reject
  }}
  chain in {{
    type filter hook input priority 0; policy accept;
    meta mark {mark:#010x} ct state established,related accept
    meta mark {mark:#010x} socket cgroupv2 level {job_level} "{job_path}" accept
    meta mark {mark:#010x} meta l4proto tcp reject with tcp reset
    meta mark {mark:#010x} reject
  }}
}}
"""


def _nft(script: str | None, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([NFT, *args] + (["-f", "-"] if script is not None else []), input=script,
                          capture_output=True, text=True, timeout=timeout)


def _nft_path(directory: Path) -> str:
    return os.path.relpath(directory, CGROUP_FS)


def kill_and_rmdir(directory: Path) -> None:
    """Kill whatever is left in a cgroup folder, then remove it (a folder with processes in
    it cannot be removed; a process may fork while it is killed, hence the retries)."""
    for _ in range(50):
        try:
            pids = (directory / "cgroup.procs").read_text().split()
        except OSError:
            return
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def _enable_controllers(directory: Path) -> None:
    """Best effort: pids and memory available below `directory`, so that the sandbox's own
    limits may live in the same cgroup (a process is in one cgroup v2 folder only)."""
    try:
        have = set((directory / "cgroup.controllers").read_text().split())
        wanted = " ".join(f"+{c}" for c in ("pids", "memory") if c in have)
        if wanted:
            (directory / "cgroup.subtree_control").write_text(wanted)
    except OSError:
        pass


@dataclass
class PeerFirewall:
    """One assignment's firewall: `apply` before its sandbox starts, `remove` after."""

    job: int
    assignment: int
    peers: tuple[Address, ...]
    mount: Path = field(default_factory=lambda: cgroup2_mount() or CGROUP_FS / "unified")
    agent: int = field(default_factory=os.getpid)

    @property
    def job_dir(self) -> Path:
        return self.mount / GROUP / f"job-{self.job}"

    @property
    def dir(self) -> Path:
        return self.job_dir / f"a-{self.assignment}-{self.agent}"

    @property
    def table(self) -> str:
        return f"{TABLE_PREFIX}{self.assignment}_{self.agent}"

    @property
    def procs(self) -> str:
        return str(self.dir / "cgroup.procs")

    def apply(self) -> None:
        if CGROUP_FS not in (self.mount, *self.mount.parents):
            raise FirewallError(f"the cgroup2 mount {self.mount} is not under {CGROUP_FS}")
        try:
            for directory in (self.mount / GROUP, self.job_dir):
                directory.mkdir(exist_ok=True)
                _enable_controllers(directory)
            self.dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise FirewallError(f"cannot create the sandbox's cgroup {self.dir}: {exc.strerror}") from None
        rules = ruleset(table=self.table, job_path=_nft_path(self.job_dir),
                        job_level=len(self.job_dir.relative_to(self.mount).parts),
                        assignment_path=_nft_path(self.dir),
                        assignment_level=len(self.dir.relative_to(self.mount).parts),
                        mark=job_mark(self.job), peers=self.peers)
        try:
            done = _nft(rules)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.remove()
            raise FirewallError(f"nft failed: {exc}") from None
        if done.returncode != 0:
            self.remove()
            raise FirewallError(f"nft refused the sandbox's rules: {done.stderr.strip()[:300]}")

    def remove(self) -> None:
        """Kill what is left in the cgroup, remove it (and the job's folder once empty), then
        the table: in that order, so that nothing of the sandbox runs unfiltered."""
        kill_and_rmdir(self.dir)
        try:
            self.job_dir.rmdir()  # another assignment of the job on this host keeps it
        except OSError:
            pass
        try:
            _nft(None, "delete", "table", "inet", self.table)
        except (OSError, subprocess.TimeoutExpired):
            pass


def probe() -> tuple[bool, str]:
    """(True, "") when this machine can build peers' firewalls, else (False, why)."""
    if os.geteuid() != 0:
        return False, "the agent does not run as root (nftables rules need it)"
    if shutil.which(NFT) is None:
        return False, "nftables is not installed (apt-get install nftables)"
    mount = cgroup2_mount()
    if mount is None:
        return False, "no cgroup v2 hierarchy is mounted"
    group = mount / GROUP
    if CGROUP_FS not in (mount, *mount.parents):
        return False, f"the cgroup2 mount {mount} is not under {CGROUP_FS}"
    try:
        group.mkdir(exist_ok=True)
    except OSError as exc:
        return False, f"cannot create the cgroup {group}: {exc.strerror}"
    # Checked (-c), not loaded: two agents starting on one host do not race on a table.
    rules = ruleset(table=f"{TABLE_PREFIX}probe", job_path=_nft_path(group), job_level=1,
                    assignment_path=_nft_path(group), assignment_level=1, mark=job_mark(0),
                    peers=(ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1")))
    try:
        done = _nft(rules, "-c")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"nft failed: {exc}"
    if done.returncode != 0:
        return False, f"nft refused the sandbox's rules: {done.stderr.strip()[:300]}"
    return True, ""


def _has_processes(directory: Path) -> bool:
    try:
        return bool((directory / "cgroup.procs").read_text().split())
    except OSError:
        return False


def _young(directory: Path) -> bool:
    try:
        return time.time() - directory.stat().st_mtime < STALE_AFTER_S
    except OSError:
        return False


def remove_stale(*, mount: Path | None = None) -> list[str]:
    """At agent start: the tables and cgroups of sandboxes that no longer run (an agent that
    died before it cleaned up). A cgroup with processes, or created moments ago (another
    agent's sandbox starting on this host), is left. Returns what was removed."""
    mount = mount or cgroup2_mount()
    if mount is None or shutil.which(NFT) is None:
        return []
    group = mount / GROUP
    live: set[str] = set()  # "A_P" of the sandboxes that still run
    removed: list[str] = []
    for directory in sorted(group.glob("job-*/a-*")) if group.is_dir() else []:
        if _has_processes(directory) or _young(directory):
            live.add(directory.name[2:].replace("-", "_"))
            continue
        kill_and_rmdir(directory)
        removed.append(str(directory))
    for job_dir in sorted(group.glob("job-*")) if group.is_dir() else []:
        if not _young(job_dir):
            try:
                job_dir.rmdir()
            except OSError:
                pass
    try:
        listed = _nft(None, "list", "tables").stdout
    except (OSError, subprocess.TimeoutExpired):
        return removed
    for table, key in _TABLE_LINE.findall(listed):
        if key not in live:
            _nft(None, "delete", "table", "inet", table)
            removed.append(f"nft table inet {table}")
    return removed


def for_assignment(start: dict, rdzv: dict) -> PeerFirewall:
    """The firewall of one assignment of a multi-node job, from its start message: its peers
    are exactly the rendezvous host (rank 0's advertised address) and the other nodes'
    addresses the platform names (`peers`)."""
    named = start.get("peers") or []
    if not isinstance(named, list):
        raise FirewallError("the platform's peer list is not a list")
    return PeerFirewall(job=int(start["job"]), assignment=int(start["assignment"]),
                        peers=peer_addresses([rdzv["host"], *named]))
