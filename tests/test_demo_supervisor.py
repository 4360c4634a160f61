"""The demo runner's supervisor on real short-lived processes: the restart backoff and its
log lines, and an agent's orphans (processes in a session of their own, as its training
ranks are) killed before the agent comes back."""

import io
import os
import subprocess
import sys
import time

from webapp import devserver
from webapp.devserver import Child, Supervisor

from .stack import wait_for


def tend_until(supervisor: Supervisor, done, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, supervisor.out.getvalue()
        supervisor.tend()
        time.sleep(0.05)


def test_a_child_that_keeps_exiting_is_restarted_with_a_doubling_backoff_and_reset_when_stable(monkeypatch):
    monkeypatch.setattr(devserver, "STABLE_AFTER_S", 3.0)
    flag = f"/tmp/computemesh-supervisor-{os.getpid()}"
    # Exits with 3 at once until the flag exists, then stays up for 4 s and exits with 0.
    script = (f"import os, sys, time\nif not os.path.exists({flag!r}): sys.exit(3)\n"
              "time.sleep(4)\nsys.exit(0)")
    out = io.StringIO()
    supervisor = Supervisor(out)
    try:
        supervisor.add(Child("flaky", [sys.executable, "-c", script]))
        tend_until(supervisor, lambda: out.getvalue().count("restarting in") >= 3, timeout=30)
        open(flag, "w").close()
        tend_until(supervisor, lambda: "(exit code 0)" in out.getvalue(), timeout=30)
    finally:
        supervisor.stop()
        os.unlink(flag)
    exits = [line for line in out.getvalue().splitlines() if "flaky exited" in line]
    delays = [line.rsplit("restarting in ", 1)[1] for line in exits]
    assert delays[:3] == ["1 s", "2 s", "4 s"], exits
    assert "(exit code 3)" in exits[0]
    # The run that stayed up longer than STABLE_AFTER_S starts the backoff again from 1 s.
    assert "(exit code 0)" in exits[-1] and delays[-1] == "1 s", exits
    assert "flaky started (pid " in out.getvalue() and ", restart 3)" in out.getvalue()


def test_what_an_exited_agent_left_in_other_sessions_is_killed_before_it_restarts(tmp_path):
    workdir = tmp_path / "agents" / "local-cpu-1"
    workdir.mkdir(parents=True)
    pids = tmp_path / "orphan.pid"
    # Like an agent: its "training" leads a session of its own and names the workdir, and
    # the agent dies without stopping it.
    script = ("import subprocess, sys\n"
              f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', "
              f"{str(workdir / 'assignments' / '7' / 'spec.json')!r}], start_new_session=True)\n"
              f"open({str(pids)!r}, 'w').write(str(p.pid))\n")
    # A process in a session of its own that does not name the workdir: not the agent's.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 start_new_session=True)
    out = io.StringIO()
    supervisor = Supervisor(out)
    try:
        supervisor.add(Child("local-cpu-1", [sys.executable, "-c", script], leftovers=f"{workdir}{os.sep}"))
        orphan = int(wait_for(lambda: pids.exists() and pids.read_text(), timeout=20, every=0.05,
                              what="the orphan's pid"))
        wait_for(lambda: supervisor.exited("local-cpu-1"), timeout=20, every=0.05, what="the agent's exit")
        # The agent is gone and nothing has tended it yet: its orphan outlived it.
        assert _alive(orphan)
        tend_until(supervisor, lambda: "local-cpu-1 exited" in out.getvalue(), timeout=20)
        gone_by = time.monotonic() + 10
        while _alive(orphan) and time.monotonic() < gone_by:
            time.sleep(0.05)
        assert not _alive(orphan), "the agent's orphan outlived the supervisor's reaping"
        assert _alive(bystander.pid), "a process that does not name the workdir was killed"
        tend_until(supervisor, lambda: "local-cpu-1 started (pid" in out.getvalue().split("exited", 1)[1],
                   timeout=20)
        assert ", restart 1)" in out.getvalue()
    finally:
        supervisor.stop()
        bystander.kill()
        bystander.wait()
        if pids.exists():
            subprocess.run(["kill", "-9", pids.read_text()], check=False, capture_output=True)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_the_runner_refuses_to_start_a_second_redis_on_a_socket_that_answers(tmp_path):
    """A runner killed with SIGKILL leaves its Redis running; a new one on the same var/ must
    not start a second server writing the same append-only file. A stale socket file (a
    Redis that was SIGKILLed) is no reason to refuse."""
    from .browser_support import free_port

    sock = tmp_path / "var" / "redis" / "redis.sock"
    sock.parent.mkdir(parents=True)
    env = {**{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DJANGO_SETTINGS_MODULE")},
           "DEBUG": "1", "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
           "DEVSERVER_VAR": str(tmp_path / "var")}
    server = subprocess.Popen([devserver.redis_server(), "--port", "0", "--unixsocket", str(sock),
                               "--save", "", "--daemonize", "no"], stdout=subprocess.DEVNULL)
    try:
        wait_for(sock.exists, timeout=10, every=0.05, what="the first Redis's socket")
        done = subprocess.run([sys.executable, "-m", "webapp.devserver", "--port", str(free_port()),
                               "--no-agents"], cwd=devserver.ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
    finally:
        server.kill()
        server.wait()
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"a Redis already answers on {sock}" in done.stderr
    assert sock.exists()  # SIGKILLed: the stale file stays, and is no longer refused
    devserver.ensure_redis_free(sock)
