"""daphne serving webapp.asgi on the test database, as `make serve` and docker-compose run
it, for tests that talk HTTP to the live server (its pid too, to read its memory)."""

from contextlib import contextmanager

from .browser_support import daphne_process


@contextmanager
def daphne(**env_overrides: str):
    """(base URL, pid) of daphne serving webapp.asgi on a free port."""
    with daphne_process(logs="live-api", **env_overrides) as server:
        yield server


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
