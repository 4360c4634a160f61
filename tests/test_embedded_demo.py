"""`make demo` runs on SQLite: its migrations, demo data and local agents' registration
must work there too (the rest of the suite runs on PostgreSQL)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300)


def test_the_embedded_demo_migrates_seeds_and_registers_its_agents_on_sqlite(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "SECRET_KEY")}
    env.update(DEBUG="1", DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}",
               MEDIA_ROOT=str(tmp_path / "media"), CELERY_BROKER_URL="memory://")
    for args in (["migrate", "--noinput"], ["seed_demo"], ["seed_demo"],
                 ["demo_agents", "--write", str(tmp_path / "agents.json")]):
        done = manage(*args, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
    agents = json.loads((tmp_path / "agents.json").read_text())
    assert [a["name"] for a in agents] == ["local-cpu-1", "local-cpu-2"]
    assert all(a["token"].startswith("cmn_") for a in agents)
    done = manage("shell", "-c", "from marketplace.models import Node; "
                  "print(Node.objects.count(), Node.objects.filter(gpu_model='cpu').count())", env=env)
    total, cpu = map(int, done.stdout.split()[-2:])
    assert total >= 42 and cpu == 2


def test_the_demos_first_start_gives_its_own_agents_provider_a_payout_wallet(tmp_path, monkeypatch):
    """On a fresh database, `make demo` registers its two local agents and deploys the
    development chain: every provider, the local agents' one included, must end with a
    payout wallet, or the demo's own jobs never settle."""
    from webapp import devserver

    for name in ("REDIS_URL", "SECRET_KEY", "CHAIN_RPC_URL"):
        monkeypatch.delenv(name, raising=False)
    env = {"DEBUG": "1", "DJANGO_SETTINGS_MODULE": "webapp.settings", "ESCROW_ENABLED": "1",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}", "MEDIA_ROOT": str(tmp_path / "media"),
           "CELERY_BROKER_URL": "memory://"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(devserver, "VAR", tmp_path / "var")
    for args in (["migrate", "--noinput"], ["seed_demo"]):
        done = manage(*args, env=dict(os.environ))
        assert done.returncode == 0, done.stderr[-2000:]

    agents = devserver.prepare()  # serves the in-process chain from this process
    assert [a["name"] for a in agents] == ["local-cpu-1", "local-cpu-2"]
    done = manage("shell", "-c", "from marketplace.models import Organization as O; "
                  "print([o.name for o in O.objects.filter(kind='provider') "
                  ".exclude(wallets__is_payout=True)])", env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
