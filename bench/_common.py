"""Shared plumbing for the benchmarks: a dedicated PostgreSQL database, Django set up with
the production settings module, percentiles and a plain-text table."""

import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


def configure_django(default_db_url: str) -> str:
    """Point Django at the benchmark database (created if missing), with production
    settings: DEBUG off, PostgreSQL pool, Redis cache. Returns the database URL."""
    db_url = os.environ.setdefault("DATABASE_URL", default_db_url)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-" + "x" * 40)
    os.environ.setdefault("DEBUG", "0")
    os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
    os.environ.setdefault("STATIC_MANIFEST", "0")
    # Plain HTTP on loopback; TLS is the proxy's job.
    os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
    # Keep the throttle in the path (it costs a cache round trip) but never trip it.
    os.environ.setdefault("THROTTLE_ANON", "10000000/min")
    os.environ.setdefault("THROTTLE_USER", "10000000/min")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    ensure_database(db_url)

    import django

    django.setup()
    return db_url


def ensure_database(db_url: str) -> None:
    import psycopg

    parts = urlsplit(db_url)
    name = parts.path.lstrip("/")
    admin_url = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")


def database_name(db_url: str) -> str:
    return urlsplit(db_url).path.lstrip("/")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of the measured values."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(bench: str, *, figures: dict, baseline: dict, smoke: bool = False) -> None:
    """Write the run's figures and its baseline (measured in the same run) as JSON to
    $BENCH_JSON when set: tests/test_bench_smoke.py reads them from every bench's --smoke run."""
    import json

    out = os.environ.get("BENCH_JSON")
    if out:
        Path(out).write_text(json.dumps({"bench": bench, "smoke": smoke, "figures": figures,
                                         "baseline": baseline}, indent=1, default=str))
