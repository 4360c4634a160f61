"""`make demo`'s chain across restarts, through the runner's own `start_chain` and the demo's
SQLite database: a job funded before a restart is still funded after it (the same
contracts, nothing redeployed), and a chain folder deleted between runs is noticed."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

FUND = """
from decimal import Decimal
from marketplace.chain import indexer, sender
from marketplace.models import ChainTransaction, Organization
from marketplace.services import funding, payments
from tests.factories import JobFactory
org = Organization.objects.filter(kind="consumer").order_by("pk").first()
job = JobFactory(owner=org, budget=Decimal("25"), status="submitted")
funding.job_fund(job=job)
for tx in ChainTransaction.objects.filter(lost_reason="").exclude(status="confirmed"):
    sender.wait(tx)
indexer.index_events()
job.refresh_from_db()
print("JOB", job.pk, job.status, job.escrow.status, job.escrow.key)
"""

LOOK = """
import os
from marketplace.chain import deploy
from marketplace.models import ChainContract, Job
job = Job.objects.get(pk=int(os.environ["JOB_ID"]))
state = deploy.escrow_contract().functions.escrows(bytes.fromhex(job.escrow.key[2:])).call()[3]
contracts = sorted(ChainContract.objects.values_list("name", "address"))
print("LOOK", job.status, job.escrow.status, state, contracts, job.events.filter(reason="chain_lost").count())
"""

LOST = """
import os
from marketplace.models import Job
job = Job.objects.get(pk=int(os.environ["JOB_ID"]))
print("LOST", job.escrow.status, job.events.get(reason="chain_lost").message)
"""


def shell(code: str, job_id: str = "") -> str:
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT,
                          env={**os.environ, "JOB_ID": job_id}, text=True, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def last(out: str, tag: str) -> str:
    return [line for line in out.splitlines() if line.startswith(tag + " ")][-1]


def test_the_demo_chain_keeps_a_funded_escrow_across_restarts_and_notices_a_new_one(tmp_path, monkeypatch):
    from webapp import devserver

    for name in ("REDIS_URL", "SECRET_KEY", "CHAIN_RPC_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"DEBUG": "1", "DJANGO_SETTINGS_MODULE": "webapp.settings", "ESCROW_ENABLED": "1",
                        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
                        "MEDIA_ROOT": str(tmp_path / "media"), "CELERY_BROKER_URL": "memory://"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(devserver, "VAR", tmp_path / "var")
    for args in (["migrate", "--noinput"], ["seed_demo"]):
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=dict(os.environ),
                              text=True, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    def start():
        monkeypatch.delenv("CHAIN_RPC_URL", raising=False)  # start_chain sets it for its children
        return devserver.start_chain()

    server = start()
    _, job_id, status, escrow_status, _ = last(shell(FUND), "JOB").split()
    assert (status, escrow_status) == ("funded", "funded")
    before = last(shell(LOOK, job_id), "LOOK")
    server.close()

    server = start()  # the restart: the same folder
    after = last(shell(LOOK, job_id), "LOOK")
    assert after == before and after.startswith("LOOK funded funded 1 ")  # same contracts, still funded
    assert after.endswith(" 0")  # and no chain_lost note
    server.close()

    shutil.rmtree(tmp_path / "var" / "chain")  # a new chain where the old one was
    server = start()
    lost = last(shell(LOST, job_id), "LOST")
    server.close()
    assert lost.startswith("LOST chain_lost The escrow's chain is gone: the chain was reset")


def test_the_disk_chain_benchmark_runs():
    """bench/devchain_disk.py's smoke mode, so that the benchmark cannot rot unnoticed."""
    done = subprocess.run([sys.executable, "bench/devchain_disk.py", "--smoke"], cwd=ROOT, text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, "DATABASE_URL": "sqlite:///:memory:"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "JSON-RPC, disk" in done.stdout and "reopening a chain of 5 blocks" in done.stdout
