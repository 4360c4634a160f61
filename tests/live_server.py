"""daphne serving webapp.asgi on the test database, as `make serve` and docker-compose run
it, for tests that talk HTTP to the live server (its pid too, to read its memory)."""

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

from . import browser_support
from .browser_support import ROOT, free_port
from .platform_logs import LogFile, watch


@contextmanager
def daphne(**env_overrides: str):
    """(base URL, pid) of daphne serving webapp.asgi on a free port."""
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings_test",
           "DATABASE_URL": browser_support.test_database_url(), "DATABASE_POOL_MIN": "1",
           **env_overrides}
    path = ROOT / "test-results" / "live-api" / f"daphne-{port}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "w")  # noqa: SIM115
    watch(LogFile(path))
    proc = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                             "webapp.asgi:application"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"daphne exited; see {path}"
            try:
                with urllib.request.urlopen(base + "/api/v1/templates/", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"daphne did not answer; see {path}"
                time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
