"""The verify wall in the production shape (issue 15): the platform's image is built without
torch (Dockerfile: `pip install .`), only the verify worker's adds it (`EXTRAS=verify`).

Before: services/verification.py imported workers.training (torch), the image had no torch
and the plain worker consumed the verify queue, so every verification in production failed
with ModuleNotFoundError and jobs stayed `verifying`.

Each image's dependency set is a fresh virtual environment holding exactly the
distributions pyproject.toml declares for it (tests/venvs.py: linked from this
environment, nothing downloaded), with the project's source on its path."""

import os
import subprocess
from pathlib import Path

import pytest

from marketplace.models import Dispute, Job, VerificationReport
from workers import verify

from .stack import Stack, wait_for
from .venvs import declared, linked_venv
from .verify_support import Agent, _point, celery_app, cpu_node, running_job, saved, trained_segment

ROOT = Path(__file__).resolve().parent.parent
TASK_MODULES = ["workers.tasks", "workers.tasks_chain", "workers.tasks_dispatch", "workers.tasks_verify"]


def image_venv(where: Path, extras: tuple[str, ...] = ()) -> str:
    """A fresh venv with the image's dependency set (`pip install .[extras]`, as the
    Dockerfile installs) and the project's source; its python."""
    return linked_venv(where, declared(ROOT / "pyproject.toml", *extras), [ROOT])


def _run(python: str, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["DJANGO_SETTINGS_MODULE"] = "webapp.settings_test"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=180, check=False)


def test_the_torch_half_names_only_the_platforms_dispute_reasons():
    assert set(verify.REASONS) <= set(Dispute.Reason.values)


def test_the_plain_image_imports_every_task_module_and_the_platform_without_torch(tmp_path):
    python = image_venv(tmp_path)
    assert _run(python, "import torch").returncode != 0  # the image has no torch
    result = _run(python, f"""
import importlib, pkgutil, sys
import django
django.setup()
import webapp.celery
for name in {TASK_MODULES!r}:
    importlib.import_module(name)
import marketplace
for info in pkgutil.walk_packages(marketplace.__path__, "marketplace."):
    if ".tests" not in info.name:
        importlib.import_module(info.name)
assert "torch" not in sys.modules, "the platform imported torch"
webapp.celery.app.loader.import_default_modules()
print(sorted(t for t in webapp.celery.app.tasks if t.startswith("workers.tasks_verify")))
""")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "workers.tasks_verify.verify_attempt" in result.stdout  # registered, runnable elsewhere
    # The torch half itself is what the plain image cannot load.
    assert "No module named 'torch'" in _run(python, "import workers.verify").stderr


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_verify_image_runs_a_verification_end_to_end(tmp_path, client):
    python = image_venv(tmp_path / "image", ("verify",))
    stack = Stack(tmp_path, redis_url=None, queues="verify")
    stack.env["VERIFY_REPLAY_SHARE"] = "1.0"  # both stretches replayed, 0..5 and 5..10
    stack.own_redis.start()
    saved_url = celery_app.conf.broker_url
    _point(stack.own_redis.url)
    try:
        stack.worker("verify-image", beat=False, concurrency=1, python=python)
        job, parts = running_job([cpu_node()])
        end = trained_segment(client, parts, world=1)
        Agent(client, parts[0]).finish(step=10, artifact=saved({"model": end}), metric="accuracy", value=None)

        def verified():
            report = VerificationReport.objects.filter(job=job).first()
            return report is not None and report.status in ("passed", "failed", "error") and report

        report = wait_for(verified, timeout=240, what="the verify image's worker to check the work")
        assert report.status == "passed", report.reasons
        assert report.segments and all(s["passed"] for s in report.segments)
        assert Job.objects.get(pk=job.pk).status == Job.Status.COMPLETED
    finally:
        stack.stop()
        _point(saved_url)
