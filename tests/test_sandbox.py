"""Issue 16, the provider's sandbox: escapes tried from inside it, each refused, while a real
training run inside it still works.

Every attack is a small Python script started the way the agent starts an assignment's
ranks: `launcher.sandboxed` around the command, `launcher.start` in a new session, in the
assignment's folder under an agent work directory that also holds the agent's token and a
second assignment's folder."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from workers.agent import launcher
from workers.agent import sandbox as sandboxing
from workers.agent.events_tail import EventTail

pytestmark = pytest.mark.skipif(not sandboxing.available(),
                                reason="bubblewrap cannot build a sandbox here (apt-get install bubblewrap)")

TOKEN = "cmn_secret-agent-token-4d1f"
MiB = 1 << 20


@pytest.fixture
def agent_dir(tmp_path):
    """An agent's work directory: its token file, its outbox, two assignments' folders."""
    root = tmp_path / "agent"
    (root / "assignments" / "7").mkdir(parents=True)
    (root / "assignments" / "8").mkdir(parents=True)
    (root / "token").write_text(TOKEN)
    (root / "outbox.sqlite3").write_text(f"outbox with {TOKEN}")
    (root / "assignments" / "8" / "dataset.csv").write_text("another job's data\n")
    return root


def run_attack(agent_dir: Path, script: str, *, limits: sandboxing.Limits | None = None,
               nnodes: int = 1, timeout: float = 120) -> tuple[int, dict, str, sandboxing.Sandbox]:
    """Run `script` in assignment 7's sandbox; it prints one JSON line of findings last."""
    job = agent_dir / "assignments" / "7"
    (job / "attack.py").write_text(textwrap.dedent(script))
    env = {**launcher.environment(threads=1), "COMPUTEMESH_AGENT_TOKEN": TOKEN,
           "AGENT_DIR": str(agent_dir)}
    cmd, outer_env, box = launcher.sandboxed([sys.executable, str(job / "attack.py"), str(agent_dir)],
                                             env, job_dir=job, nnodes=nnodes, limits=limits)
    watch = sandboxing.DiskWatch(job, box.limits.disk_bytes, every_s=0.2) if box.limits.disk_bytes else None

    async def go() -> tuple[int, str]:
        process = await launcher.start(cmd, outer_env, job)
        watcher = asyncio.create_task(watch.run(process)) if watch else None
        try:
            out, _ = await asyncio.wait_for(process.communicate(), timeout)
        finally:
            await launcher.stop(process, grace_s=2)
            if watcher:
                watcher.cancel()
        return process.returncode, out.decode(errors="replace")

    try:
        code, output = asyncio.run(go())
    finally:
        box.close()
    findings = {}
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            findings = json.loads(line)
            break
    box.disk_watch = watch  # type: ignore[attr-defined]
    return code, findings, output, box


def test_the_agents_token_its_files_and_other_jobs_cannot_be_read(agent_dir):
    code, found, output, _ = run_attack(agent_dir, """
        import json, os, sys
        agent = sys.argv[1]
        out = {"env": {k: v for k, v in os.environ.items() if "TOKEN" in k or "secret" in v}}
        for name, path in {"token": f"{agent}/token", "outbox": f"{agent}/outbox.sqlite3",
                           "other_job": f"{agent}/assignments/8/dataset.csv",
                           "shadow": "/etc/shadow", "root_home": "/root/.bash_history",
                           "pid1_environ": "/proc/1/environ"}.items():
            try:
                out[name] = open(path, errors="replace").read()
            except OSError as exc:
                out[name] = type(exc).__name__
        status = open("/proc/self/status").read()
        out["no_new_privs"] = [l for l in status.splitlines() if l.startswith("NoNewPrivs")][0]
        out["cap_eff"] = [l for l in status.splitlines() if l.startswith("CapEff")][0]
        out["uid"] = os.getuid()
        out["listing"] = sorted(os.listdir(agent)) if os.path.isdir(agent) else []
        print(json.dumps(out))
    """)
    assert code == 0, output
    assert TOKEN not in output
    assert found["env"] == {}
    for name in ("token", "outbox", "other_job", "shadow", "root_home"):
        assert found[name] == "FileNotFoundError", (name, found[name])
    assert "secret" not in found["pid1_environ"]
    assert found["no_new_privs"].split() == ["NoNewPrivs:", "1"]
    assert int(found["cap_eff"].split()[1], 16) == 0
    assert found["uid"] == sandboxing.SANDBOX_UID
    assert found["listing"] == ["assignments"]  # only the path down to its own folder


def test_nothing_outside_the_job_folder_can_be_written(agent_dir):
    code, found, output, _ = run_attack(agent_dir, """
        import json, os, sys
        agent = sys.argv[1]
        here = os.getcwd()
        out = {}
        for name, path in {"own": f"{here}/out.txt", "tmp": "/tmp/x",
                           "agent": f"{agent}/token", "other_job": f"{agent}/assignments/8/x",
                           "runtime": os.path.join(os.path.dirname(os.__file__), "evil.py"),
                           "package": os.environ["PYTHONPATH"].split(":")[0] + "/workers/evil.py",
                           "usr": "/usr/bin/evil", "etc": "/etc/passwd"}.items():
            try:
                with open(path, "a") as fh:
                    fh.write("x")
                out[name] = "written"
            except OSError as exc:
                out[name] = type(exc).__name__
        print(json.dumps(out))
    """)
    assert code == 0, output
    assert found["own"] == "written" and found["tmp"] == "written", found
    # pytest's folders are under /tmp: there the sandbox sees its own private /tmp, so a write
    # "into the agent's folder" lands in that tmpfs and vanishes with it (checked below).
    private_tmp = str(agent_dir).startswith("/tmp/")
    for name in ("other_job", "runtime", "package", "usr", "etc") + (() if private_tmp else ("agent",)):
        assert found[name] in ("OSError", "FileNotFoundError", "PermissionError"), (name, found)
    assert (agent_dir / "token").read_text() == TOKEN
    assert not (agent_dir / "assignments" / "8" / "x").exists()
    assert (agent_dir / "assignments" / "7" / "out.txt").read_text() == "x"


def _host_address() -> str:
    """A non-loopback address of this machine (what a peer or the internet would be)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.1", 9))  # no packet is sent: only the route is looked up
        return s.getsockname()[0]


def test_a_single_node_job_reaches_no_address_but_its_own_loopback(agent_dir):
    accepted: list[tuple] = []
    servers = []
    for host in ("127.0.0.1", _host_address()):
        server = socket.create_server((host, 0))
        server.settimeout(0.2)
        servers.append(server)

    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            for server in servers:
                try:
                    accepted.append(server.accept()[1])
                except OSError:
                    pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    targets = [s.getsockname()[:2] for s in servers] + [("1.1.1.1", 443)]
    try:
        code, found, output, _ = run_attack(agent_dir, f"""
            import json, socket
            out = {{}}
            for host, port in {targets!r}:
                try:
                    socket.create_connection((host, port), timeout=3).close()
                    out[f"{{host}}:{{port}}"] = "connected"
                except OSError as exc:
                    out[f"{{host}}:{{port}}"] = type(exc).__name__
            # Its own loopback works (torchrun's store and gloo use it).
            own = socket.create_server(("127.0.0.1", 0))
            socket.create_connection(own.getsockname()[:2], timeout=3).close()
            out["own_loopback"] = "connected"
            print(json.dumps(out))
        """)
    finally:
        stop.set()
        thread.join()
        for server in servers:
            server.close()
    assert code == 0, output
    assert found.pop("own_loopback") == "connected"
    assert len(found) == 3 and "connected" not in found.values(), found
    assert accepted == []


def test_a_fork_bomb_is_bounded_by_the_process_limit_and_the_agent_survives(agent_dir):
    limits = sandboxing.Limits(processes=64, wall_s=60)
    started = time.monotonic()
    code, found, output, box = run_attack(agent_dir, """
        import json, os, time
        children, error = 0, None
        while children < 10000:
            try:
                pid = os.fork()
            except OSError as exc:
                error = type(exc).__name__ + ": " + exc.strerror
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children += 1
        print(json.dumps({"children": children, "error": error}), flush=True)
        os._exit(0)
    """, limits=limits)
    assert found["error"] and "Resource temporarily unavailable" in found["error"], output
    assert found["children"] < limits.processes
    assert box.enforcement.processes != "none"
    # The agent's side still forks, and nothing of the bomb outlives its sandbox.
    assert subprocess.run(["true"]).returncode == 0
    assert time.monotonic() - started < 50  # its children did not hold the run open
    for directory in box.cgroups.dirs:
        assert not directory.exists()


def test_filling_the_disk_is_bounded(agent_dir):
    limits = sandboxing.Limits(file_bytes=8 * MiB, disk_bytes=32 * MiB, tmp_bytes=4 * MiB)
    code, found, output, box = run_attack(agent_dir, """
        import json, os, sys
        out = {}
        chunk = b"x" * (1 << 20)
        def fill(path, mib):
            written = 0
            try:
                with open(path, "wb") as fh:
                    for _ in range(mib):
                        fh.write(chunk); fh.flush(); written += 1
            except OSError as exc:
                return f"{type(exc).__name__} after {written} MiB"
            return f"{written} MiB"
        out["one_big_file"] = fill("big.bin", 100)
        out["tmp"] = fill("/tmp/big.bin", 100)
        os.remove("big.bin")
        print(json.dumps(out), flush=True)
        for i in range(1000):  # many files, each under the per-file limit
            fill(f"part-{i}.bin", 4)
        print("filled without being stopped", flush=True)
    """, limits=limits)
    assert found["one_big_file"].startswith("OSError after 8 MiB") or "File too large" in output, found
    assert found["tmp"].startswith("OSError after 3 MiB") or found["tmp"].startswith("OSError after 4"), found
    assert "filled without being stopped" not in output
    assert code != 0
    watch = box.disk_watch  # type: ignore[attr-defined]
    assert watch.exceeded is not None and "disk limit" in watch.reason()
    job = agent_dir / "assignments" / "7"
    # Bounded: the limit plus what it wrote in one interval of the watch (0.2 s here; up to
    # ~270 MiB measured on this machine, page-cache speed, so the margin is generous: the
    # unbounded attack would write 4 GiB).
    assert sandboxing.folder_bytes(job) < limits.disk_bytes + 1024 * MiB


def test_the_wall_time_limit_stops_the_job(agent_dir):
    started = time.monotonic()
    code, _, output, _ = run_attack(agent_dir, """
        import time
        print("sleeping", flush=True)
        time.sleep(120)
    """, limits=sandboxing.Limits(wall_s=3))
    assert code == sandboxing.WALL_TIME_EXIT, output
    assert time.monotonic() - started < 30


def test_a_job_over_its_memory_limit_is_killed(agent_dir):
    code, _, output, box = run_attack(agent_dir, """
        import json
        held = []
        for i in range(64):
            held.append(bytearray(32 << 20))
            print(json.dumps({"mib": 32 * (i + 1)}), flush=True)
        print("allocated 2 GiB", flush=True)
    """, limits=sandboxing.Limits(memory_bytes=256 * MiB))
    assert box.enforcement.memory != "none"
    assert "allocated 2 GiB" not in output
    assert code != 0


def test_two_gloo_ranks_train_inside_the_sandbox(agent_dir):
    """The legitimate use: the runtime's own 2-rank torchrun on loopback, in the sandbox."""
    job = agent_dir / "assignments" / "7"
    spec = {"template": "tabular-classifier", "dataset": {"kind": "sample", "name": "breast-cancer"},
            "params": {"epochs": 1, "batch_size": 16, "learning_rate": 0.003, "hidden_units": 16,
                       "hidden_layers": 1, "dropout": 0.0, "checkpoint_every": 10, "seed": 0},
            "workdir": str(job), "backend": "gloo", "pause_file": str(job / "pause")}
    (job / "spec.json").write_text(json.dumps(spec))
    cmd = launcher.command(spec_path=job / "spec.json", nnodes=1, node_rank=0, nproc_per_node=2,
                           master_addr="127.0.0.1", master_port=launcher.free_port())
    cmd, env, box = launcher.sandboxed(cmd, launcher.environment(threads=1), job_dir=job, nnodes=1)

    async def go() -> tuple[int, bytes]:
        process = await launcher.start(cmd, env, job)
        out, _ = await asyncio.wait_for(process.communicate(), 240)
        return process.returncode, out

    try:
        code, out = asyncio.run(go())
    finally:
        box.close()
    assert code == 0, out.decode()[-3000:]
    events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
    finished = [e for e in events if e["type"] == "finished"]
    assert finished and finished[0]["value"] > 0.8, events[-3:]
    assert len(set(finished[0]["param_digests"])) == 1 and len(finished[0]["param_digests"]) == 2
    assert (job / "model.pt").exists()


# --- what the agent reads back from the job's folder, outside the sandbox ------------------
def test_the_agent_never_follows_a_link_the_job_planted(agent_dir):
    job = agent_dir / "assignments" / "7"
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "step-0000010.pt").write_bytes(b"honest")
    (job / "leak.pt").symlink_to(agent_dir / "token")
    (job / "up").symlink_to(agent_dir)
    os.mkfifo(job / "fifo")
    with sandboxing.open_job_file(job, job / "checkpoints" / "step-0000010.pt") as fh:
        assert fh.read() == b"honest"
    for path in (job / "leak.pt", job / "up" / "token", job / ".." / ".." / "token",
                 agent_dir / "token", job / "fifo", job / "checkpoints"):
        with pytest.raises(sandboxing.OutsideJob):
            sandboxing.open_job_file(job, path)


def test_the_event_tail_skips_links_and_lines_it_cannot_trust(agent_dir):
    job = agent_dir / "assignments" / "7"
    events = job / "events.jsonl"
    events.symlink_to("/dev/zero")
    tail = EventTail(events)
    assert tail.poll() == []  # neither read nor hung on
    events.unlink()
    events.write_text('{"type": "progress", "step": 1}\nnot json\n[1, 2]\n{"step": 2}\n'
                      '{"type": "progress", "step": 3}\n{"type": "partial"')
    assert [e["step"] for e in tail.poll()] == [1, 3]
    with open(events, "a") as fh:
        fh.write("x" * (5 << 20))  # a line longer than any event, without its end
    assert tail.poll() == [] and tail.poll() == []


def test_the_overhead_bench_smoke_run(tmp_path):
    """bench/sandbox_overhead.py --smoke: the same training inside and outside, one run each
    (the figures and the baseline from the same run; the ratio needs the full run)."""
    out = tmp_path / "bench.json"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "bench" / "sandbox_overhead.py"), "--smoke"],
                          cwd=root, env={**os.environ, "BENCH_JSON": str(out)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["bench"] == "sandbox_overhead"
    assert result["figures"]["inside_steps_per_s"] > 0 and result["baseline"]["outside_steps_per_s"] > 0


def test_two_sandboxed_nodes_train_one_ddp_job_over_the_hosts_network(agent_dir):
    """A multi-node job's sandboxes share the host's network (their peers connect to their
    ranks): two nodes of one DDP job, each torchrun in its own sandbox, meet and agree."""
    port = launcher.free_port()
    runs = []
    for node_rank, job_id in ((0, "7"), (1, "8")):
        job = agent_dir / "assignments" / job_id
        spec = {"template": "tabular-classifier", "dataset": {"kind": "sample", "name": "breast-cancer"},
                "params": {"epochs": 1, "batch_size": 16, "learning_rate": 0.003, "hidden_units": 16,
                           "hidden_layers": 1, "dropout": 0.0, "checkpoint_every": 10, "seed": 0},
                "workdir": str(job), "backend": "gloo", "nnodes": 2, "node_rank": node_rank}
        (job / "spec.json").write_text(json.dumps(spec))
        cmd = launcher.command(spec_path=job / "spec.json", nnodes=2, node_rank=node_rank, nproc_per_node=1,
                               master_addr="127.0.0.1", master_port=port)
        runs.append((job, *launcher.sandboxed(cmd, launcher.environment(threads=1), job_dir=job, nnodes=2)))
    assert all(box.network == "host" for _, _, _, box in runs)

    async def go() -> list[tuple[int, bytes]]:
        processes = [await launcher.start(cmd, env, job) for job, cmd, env, _ in runs]
        outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), 240)
        return [(p.returncode, out) for p, (out, _) in zip(processes, outs, strict=True)]

    try:
        results = asyncio.run(go())
    finally:
        for *_, box in runs:
            box.close()
    output = "".join(out.decode()[-2000:] for _, out in results)
    assert [code for code, _ in results] == [0, 0], output
    lines = (agent_dir / "assignments" / "7" / "events.jsonl").read_text().splitlines()
    events = [json.loads(x) for x in lines]
    finished = [e for e in events if e["type"] == "finished"][0]
    assert len(finished["param_digests"]) == 2 and len(set(finished["param_digests"])) == 1
