"""The sandbox an assignment's training processes run in (issue 16): bubblewrap, resource
limits and cgroups around the torchrun command the launcher builds.

What the processes inside see:
- the system (/usr and a few files of /etc) and the Python runtime (interpreter, venv, this
  package's `workers` folder) read-only, and nothing else of the host's file system: not
  the agent's home, token, outbox or configuration, nor other assignments' folders;
- one writable folder, the assignment's own (at the same path as outside, so the spec's
  paths hold), a private /tmp and /dev/shm (size-limited tmpfs), their own /proc and /dev;
- their own user (nobody), PID, IPC, UTS and cgroup namespaces, no capabilities, no new
  privileges (bwrap sets PR_SET_NO_NEW_PRIVS), no nested user namespaces, a new session
  (no TIOCSTI into the agent's terminal); killed when the agent dies;
- single-node jobs: their own network namespace with loopback only. Multi-node jobs share
  the host's network (their peers must reach their ranks' ports) and, in "peers" mode
  (peer_firewall.py), may open connections only to their job's peers and to listeners of
  their own job on this host: see docs/tasks.md for what that does and does not allow;
- GPUs: /dev/nvidia* passed through (and /sys read-only) when present.

Limits: processes and memory by cgroup (pids, memory) where the agent may create cgroups,
open files and the size of any one file by rlimit, the job folder's total size by the
agent's watch (`DiskWatch`), wall time by `timeout`. `Enforcement` says which held.
A little over 400 lines: the command line, the limits and the probe of what this host
allows are one thing to read when a sandbox misbehaves (the firewall is its own module).
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .peer_firewall import PeerFirewall, kill_and_rmdir

BWRAP = "bwrap"
CONFINE = Path(__file__).with_name("confine.py")
# Inside the sandbox the job runs as nobody (mapped to the agent's own user outside).
SANDBOX_UID = 65534
GiB = 1 << 30

# Files of /etc that a Python runtime needs (dynamic linker, TLS roots, names, time zone);
# the rest of /etc (the host's secrets, SSH keys, shadow) stays outside.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates",
             "alternatives", "localtime", "nsswitch.conf", "hosts", "passwd", "group",
             "resolv.conf", "os-release")
# The environment the ranks get; everything else of the agent's (its token above all) stays out.
ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONHASHSEED",
            "COMPUTEMESH_FAULTS")
ENV_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "TORCH_", "NCCL_", "GLOO_", "CUDA_", "NVIDIA_")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces on this machine."""


@dataclass(frozen=True)
class Limits:
    """Per assignment. None: not limited."""

    memory_bytes: int | None = 16 * GiB
    processes: int = 1024  # threads count too (pids cgroup); torch starts a few per rank
    open_files: int = 8192
    file_bytes: int = 64 * GiB  # any one file (a checkpoint, a dataset)
    disk_bytes: int | None = 128 * GiB  # the job folder in all
    tmp_bytes: int = 1 * GiB  # /tmp and /dev/shm each (tmpfs: counts as memory)
    wall_s: float | None = 7 * 24 * 3600.0

    @classmethod
    def from_options(cls, *, memory_gb: float | None = None, processes: int | None = None,
                     disk_gb: float | None = None, wall_h: float | None = None) -> Limits:
        base = cls()
        return cls(
            memory_bytes=int(memory_gb * GiB) if memory_gb else base.memory_bytes,
            processes=processes or base.processes,
            disk_bytes=int(disk_gb * GiB) if disk_gb else base.disk_bytes,
            file_bytes=min(base.file_bytes, int(disk_gb * GiB)) if disk_gb else base.file_bytes,
            wall_s=wall_h * 3600 if wall_h else base.wall_s)


@dataclass
class Enforcement:
    """Which limits hold on this machine for one assignment (reported in its log)."""

    processes: str = "none"
    memory: str = "none"
    network: str = ""
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        network = f"network: {self.network}; " if self.network else ""
        return f"{network}processes by {self.processes}, memory by {self.memory}" + (
            f" ({'; '.join(self.notes)})" if self.notes else "")


def _own_cgroups() -> dict[str, str]:
    """controller (or '' for cgroup v2) -> this process's cgroup path."""
    found = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            found[name] = path
    return found


class Cgroups:
    """The assignment's cgroups (pids and memory), under the agent's own, when it may create
    them (root, or a delegated cgroup v2 subtree). Removed, with anything left in them, by
    `remove`."""

    def __init__(self, name: str, limits: Limits, *, root: Path = Path("/sys/fs/cgroup"),
                 v2_dir: Path | None = None):
        # v2_dir: the cgroup v2 folder the sandbox must be in anyway (its peers' firewall
        # matches it); a process is in one v2 folder only, so the v2 limits go there too.
        self.v2_dir = v2_dir
        self.dirs: list[Path] = []
        self.enforcement = Enforcement()
        own = _own_cgroups()
        for controller in ("pids", "memory"):
            mount = root / controller
            if controller in own and (mount / "cgroup.procs").exists():  # cgroup v1
                self._v1(mount, own[controller], controller, name, limits)
        if not self.dirs and "" in own:
            self._v2(root / "unified" if (root / "unified").is_dir() else root, own[""], name, limits)

    def _v1(self, mount: Path, path: str, controller: str, name: str, limits: Limits) -> None:
        target = mount / path.lstrip("/") / name
        try:
            target.mkdir()
            if controller == "pids":
                (target / "pids.max").write_text(str(limits.processes))
                self.enforcement.processes = "cgroup v1 pids"
            elif limits.memory_bytes:
                (target / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
                self.enforcement.memory = "cgroup v1 memory"
        except OSError as exc:
            self.enforcement.notes.append(f"{controller} cgroup: {exc.strerror}")
            return
        self.dirs.append(target)

    def _v2(self, mount: Path, path: str, name: str, limits: Limits) -> None:
        target = self.v2_dir or mount / path.lstrip("/") / name
        try:
            available = (target.parent / "cgroup.controllers").read_text().split()
            if not {"pids", "memory"} & set(available):
                return
            target.mkdir(exist_ok=self.v2_dir is not None)
            self.dirs.append(target)
            if "pids" in available:
                (target / "pids.max").write_text(str(limits.processes))
                self.enforcement.processes = "cgroup v2 pids"
            if "memory" in available and limits.memory_bytes:
                (target / "memory.max").write_text(str(limits.memory_bytes))
                self.enforcement.memory = "cgroup v2 memory"
        except OSError as exc:
            self.enforcement.notes.append(f"cgroup v2: {exc.strerror}")

    @property
    def procs(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def remove(self) -> None:
        """Kill whatever is left inside, then remove the cgroups."""
        for directory in self.dirs:
            kill_and_rmdir(directory)


def available() -> bool:
    """bubblewrap is installed and can build a sandbox here."""
    if shutil.which(BWRAP) is None:
        return False
    probe = [BWRAP, "--unshare-user", "--unshare-pid", "--unshare-net", "--die-with-parent",
             "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", "true"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def gpu_devices() -> list[str]:
    return sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/nvidia-caps/*"))


def runtime_paths() -> list[Path]:
    """What the training command needs to read: the interpreter, its venv and this package."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix)}
    package = Path(__file__).resolve().parents[1]  # …/workers
    paths.add(package)
    return sorted(paths)


def environment(env: dict[str, str], *, job_dir: Path) -> dict[str, str]:
    """The allow-listed part of the launcher's environment, with home and temp inside."""
    kept = {k: v for k, v in env.items() if k in ENV_KEYS or k.startswith(ENV_PREFIXES)}
    kept.update(HOME=str(job_dir), TMPDIR="/tmp", USER="nobody")
    kept.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return kept


@dataclass
class Sandbox:
    """One assignment's sandbox: `wrap` turns its torchrun command into the sandboxed one."""

    job_dir: Path
    limits: Limits = field(default_factory=Limits)
    # "loopback": a network namespace of its own (single-node jobs); "peers": the host's,
    # for multi-node jobs whose peers connect to their ranks, with connections out allowed
    # to `firewall.peers` only; "host": the host's, unfiltered (built-in templates only).
    network: str = "loopback"
    firewall: PeerFirewall | None = None  # "peers": applied by `wrap`, removed by `close`
    gpus: list[str] | None = None  # None: whatever /dev/nvidia* exists
    extra_ro: list[Path] = field(default_factory=list)
    name: str = field(default_factory=lambda: f"computemesh-{secrets.token_hex(6)}")
    cgroups: Cgroups | None = None

    def bwrap_args(self, env: dict[str, str]) -> list[str]:
        job = str(self.job_dir.resolve())
        args = [BWRAP, "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
                "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--hostname", "localhost", "--disable-userns", "--cap-drop", "ALL",
                "--die-with-parent", "--new-session"]
        if self.network == "loopback":
            args.append("--unshare-net")
        elif self.network not in ("host", "peers"):
            raise ValueError(f"unknown sandbox network {self.network!r}")
        # The fresh file systems first: a runtime or job folder under /tmp (tests) is bound
        # on top of the private /tmp, not hidden by it.
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--size", str(self.limits.tmp_bytes), "--tmpfs", "/tmp",
                 "--size", str(self.limits.tmp_bytes), "--tmpfs", "/dev/shm"]
        args += ["--ro-bind", "/usr", "/usr"]
        for top in ("bin", "lib", "lib32", "lib64", "sbin"):
            path = Path("/") / top
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                args += ["--ro-bind", str(path), str(path)]
        for name in ETC_FILES:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        for path in [*runtime_paths(), *self.extra_ro]:
            args += ["--ro-bind", str(path), str(path)]
        gpus = gpu_devices() if self.gpus is None else self.gpus
        for device in gpus:
            args += ["--dev-bind", device, device]
        if gpus:  # the CUDA runtime reads the devices' topology there
            args += ["--ro-bind", "/sys", "/sys"]
        # The skeleton bwrap builds (the folders leading to the mounts) read-only as well.
        args += ["--bind", job, job, "--remount-ro", "/", "--chdir", job, "--clearenv"]
        for key, value in sorted(environment(env, job_dir=Path(job)).items()):
            args += ["--setenv", key, value]
        return args + ["--"]

    def rlimits(self) -> dict[str, int]:
        limits = {"NOFILE": self.limits.open_files, "FSIZE": self.limits.file_bytes, "CORE": 0}
        enforcement = self.cgroups.enforcement if self.cgroups else Enforcement()
        if enforcement.processes == "none" and os.geteuid() != 0:
            # Per user, not per job (and root is exempt): the agent's own user counts too.
            limits["NPROC"] = self.limits.processes
            enforcement.processes = "RLIMIT_NPROC (per user)"
        if enforcement.memory == "none" and self.limits.memory_bytes and not gpu_devices():
            # Address space, not memory: CUDA maps far more than it uses, so never with GPUs.
            limits["AS"] = self.limits.memory_bytes
            enforcement.memory = "RLIMIT_AS"
        return limits

    def wrap(self, cmd: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        """The sandboxed command and the (outer) environment to start it with."""
        if shutil.which(BWRAP) is None:
            raise SandboxUnavailable("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
        if self.network == "peers":
            if self.firewall is None:
                raise ValueError("a sandbox in peers mode needs its firewall")
            self.firewall.apply()  # before anything of the job runs
        try:
            return self._wrap(cmd, env)
        except BaseException:
            self.close()  # nothing of it (a cgroup, the firewall) outlives a failed start
            raise

    def _wrap(self, cmd: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        self.cgroups = Cgroups(self.name, self.limits,
                               v2_dir=self.firewall.dir if self.firewall else None)
        peers = ", ".join(str(a) for a in self.firewall.peers) if self.firewall else ""
        self.cgroups.enforcement.network = {
            "loopback": "loopback only", "host": "the host's, unfiltered",
            "peers": f"the host's, confined to its peers ({peers}) and its job's listeners here",
        }[self.network]
        procs = self.cgroups.procs
        if self.firewall is not None and self.firewall.procs not in procs:
            procs = [*procs, self.firewall.procs]
        config = {"cgroups": procs, "rlimits": self.rlimits(), "parent": os.getpid()}
        outer = [sys.executable, "-I", str(CONFINE), json.dumps(config)]
        if self.limits.wall_s:
            outer += ["timeout", "--kill-after=10", f"{self.limits.wall_s:g}"]
        outer_env = {"PATH": env.get("PATH") or os.environ.get("PATH", "/usr/bin:/bin")}
        return outer + self.bwrap_args(env) + cmd, outer_env

    @property
    def enforcement(self) -> Enforcement:
        return self.cgroups.enforcement if self.cgroups else Enforcement()

    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.remove()
        if self.firewall is not None:
            self.firewall.remove()


MODES = ("custom", "all")


@dataclass(frozen=True)
class Settings:
    """The agent's sandbox options: which jobs run inside (consumers' own code always),
    whether this machine can build the sandbox, and each sandbox's limits."""

    mode: str = "custom"
    available: bool = True
    limits: Limits = field(default_factory=Limits)
    # Multi-node sandboxes can be confined to their peers (peer_firewall.probe): without
    # it, the agent refuses multi-node consumer code (and the platform does not send it).
    peer_firewall: bool = False

    def applies(self, spec: dict) -> bool:
        """Does this job's training run inside the sandbox? A job with a code bundle always."""
        return bool(spec.get("bundle")) or self.mode == "all"

    def as_dict(self) -> dict:
        return {"available": self.available, "mode": self.mode, "peer_firewall": self.peer_firewall}


WALL_TIME_EXIT = 124  # coreutils timeout's status when the limit ends the command


def folder_bytes(path: Path) -> int:
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        else:
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
        except OSError:
            continue
    return total


class DiskWatch:
    """The job folder's total size, checked every `every_s` while the ranks run; over the
    limit, the whole sandbox is killed. (A file system per job would bound it exactly; this
    bounds it to the limit plus what the job writes in one interval.)"""

    def __init__(self, job_dir: Path, limit_bytes: int, *, every_s: float = 1.0):
        self.job_dir, self.limit, self.every_s = job_dir, limit_bytes, every_s
        self.exceeded: int | None = None  # the size seen when it went over

    async def run(self, process: asyncio.subprocess.Process) -> None:
        while process.returncode is None:
            size = await asyncio.to_thread(folder_bytes, self.job_dir)
            if size > self.limit:
                self.exceeded = size
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return
            await asyncio.sleep(self.every_s)

    def reason(self) -> str | None:
        if self.exceeded is None:
            return None
        return (f"the job folder reached {self.exceeded / GiB:.2f} GiB, over the sandbox's disk "
                f"limit of {self.limit / GiB:.2f} GiB; stopped")


class OutsideJob(OSError):
    """A path the job handed the agent leads out of its folder, or is not a plain file."""


def open_job_file(job_dir: Path, path: str | Path) -> BinaryIO:
    """Open, for reading, a file the job's processes wrote: the agent reads it outside the
    sandbox, with its own rights, so a symlink the job planted (to the agent's token, to
    /dev/zero) must not be followed. Every component is opened relative to the last with
    O_NOFOLLOW (no race between a check and the open), and only a regular file is returned."""
    root = os.path.abspath(job_dir)
    full = os.path.abspath(path if os.path.isabs(path) else os.path.join(root, path))
    if os.path.commonpath([root, full]) != root or full == root:
        raise OutsideJob(f"{path} is not inside the job folder")
    parts = Path(os.path.relpath(full, root)).parts
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except NotADirectoryError:
                raise OutsideJob(f"{path}: {part} is not a folder (a link?)") from None
            os.close(fd)
            fd = inner
        try:
            leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError as exc:
            if exc.errno == 40:  # ELOOP: the last component is a symlink
                raise OutsideJob(f"{path} is a link") from None
            raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(leaf).st_mode):
        os.close(leaf)
        raise OutsideJob(f"{path} is not a plain file")
    os.set_blocking(leaf, True)
    return os.fdopen(leaf, "rb")
