"""Run the real ASGI server (daphne) against the test database, for browser tests."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from .platform_logs import LogFile, watch

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_url() -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@contextmanager
def daphne_process(*, logs: str, timeout: float = 60.0, **env_overrides: str):
    """(base URL, pid) of daphne serving webapp.asgi on the test database on a free port, as
    `make serve` and docker-compose run it. Its log goes to test-results/<logs>/, one file per
    server (other test runs on the machine start theirs meanwhile), and is read at the
    test's teardown (tests/platform_logs.py)."""
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings_test",
           "DATABASE_URL": test_database_url(), "DATABASE_POOL_MIN": "1", **env_overrides}
    path = ROOT / "test-results" / logs / f"daphne-{port}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "w")  # noqa: SIM115
    watch(LogFile(path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "webapp.asgi:application"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"daphne exited with {proc.returncode}; see {path}")
            try:
                with urllib.request.urlopen(base + "/api/v1/templates/", timeout=2):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not answer in time; see {path}")
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


def sign_in(page, base: str, username: str, password: str = "demo-pass-123") -> None:
    """Sign in through the login form, as a person would (the demo's password by default)."""
    page.goto(f"{base}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def open_live_job(page, base: str, job_id: int) -> None:
    """Open a job's page and wait until its live socket is open (the page marks it)."""
    from playwright.sync_api import expect  # only the browser tests load playwright

    page.goto(f"{base}/jobs/{job_id}/")
    expect(page.get_by_test_id("live-indicator")).to_have_text("Live", timeout=10_000)


@contextmanager
def asgi_server(timeout: float = 30.0):
    """Yield the base URL of daphne serving webapp.asgi on a free port."""
    with daphne_process(logs="browser", timeout=timeout) as (base, _pid):
        yield base
