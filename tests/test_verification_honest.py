"""No false rejections: 20 honest jobs, each a real run of the training runtime, verified by
the platform's own entry point (services/verification.py `verification_run`: random
segments within the platform's replay share, replayed; the final model against the last
committed checkpoint; the held-out metric re-measured) on database rows that record each
run as the agent's ingest would. Most run in this process as a gloo world of one (the
runtime's own main, started as torch.distributed.run would start one rank); two run as
two ranks under torch.distributed.run."""

import json
import os
import secrets
import socket
from decimal import Decimal
from pathlib import Path

import pytest
from django.db.models import F
from django.utils import timezone

from marketplace.models import Assignment, Checkpoint, Job, VerificationReport
from marketplace.services import verification
from workers.training import run
from workers.verify import check_attempt

from .factories import JobFactory, NodeFactory, OfferFactory
from .training_runs import read_events, tabular_spec, train

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(900)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_in_process(spec: dict, monkeypatch) -> dict:
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "spec.json").write_text(json.dumps(spec))
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                       "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("COMPUTEMESH_FAULTS", raising=False)
    assert run.main(str(workdir / "spec.json")) == 0
    return read_events(workdir)


def recorded(spec: dict, events: dict, world: int, media: Path) -> VerificationReport:
    """The run as the platform records it: the job verifying its first attempt, rank 0's
    assignment, each checkpoint uploaded and committed in time, the model uploaded."""
    finished = events["finished"]
    dataset = spec["dataset"]
    job = JobFactory(status=Job.Status.VERIFYING, attempt=1, template=spec["template"],
                     params=spec["params"], dataset_ref=f"sample:{dataset['name']}", nodes=1,
                     gpus_per_node=world, current_step=finished["step"],
                     metric_name=finished["metric"], metric_value=finished["value"],
                     artifact=os.path.relpath(finished["artifact"], media))
    node = NodeFactory(gpu_model="cpu", gpu_count=world, gpu_memory_gb=0)
    rank0 = Assignment.objects.create(
        job=job, node=node, offer=OfferFactory(node=node), attempt=1, node_rank=0, gpus=world,
        price_per_gpu_hour=Decimal("0.5"), status=Assignment.Status.SUCCEEDED,
        started_at=timezone.now())
    for c in events["checkpoint"]:
        Checkpoint.objects.create(job=job, assignment=rank0, step=c["step"], sha256=c["sha256"],
                                  size_bytes=os.path.getsize(c["path"]),
                                  file=os.path.relpath(c["path"], media))
    Checkpoint.objects.filter(assignment=rank0).update(committed_at=F("created_at"))
    Assignment.objects.filter(pk=rank0.pk).update(finished_at=timezone.now())
    return verification.verification_start(job=job, attempt=1)


def _jobs(tmp_path) -> list[tuple[dict, int]]:
    jobs = []
    for i in range(12):
        jobs.append((tabular_spec(tmp_path / f"tab-{i}", seed=i, learning_rate=0.001 * (1 + i % 4),
                                  hidden_units=16 * (1 + i % 3), batch_size=16 + 8 * (i % 3)), 1))
    for i in range(4):
        spec = tabular_spec(tmp_path / f"img-{i}", seed=100 + i)
        spec.update(template="image-classifier", dataset={"kind": "sample", "name": "digits"},
                    params={"epochs": 2, "batch_size": 64, "learning_rate": 0.003, "channels": 4,
                            "checkpoint_every": 50, "seed": 100 + i})
        jobs.append((spec, 1))
    for i in range(2):
        spec = tabular_spec(tmp_path / f"load-{i}", seed=200 + i)
        spec.update(template="load-forecast", dataset={"kind": "sample", "name": "grid-load"},
                    params={"epochs": 1, "batch_size": 256, "learning_rate": 0.002, "lookback_hours": 24,
                            "horizon_hours": 6, "hidden_size": 8, "checkpoint_every": 50, "seed": 200 + i})
        jobs.append((spec, 1))
    for i in range(2):
        jobs.append((tabular_spec(tmp_path / f"ddp-{i}", seed=300 + i), 2))
    return jobs


class _InOrder(secrets.SystemRandom):
    """A draw that takes the stretches in order, so the first one (from the initial state
    the verifier builds itself from the job's seed, not from a file) is always replayed."""

    def shuffle(self, x) -> None:
        pass


def test_twenty_honest_jobs_are_all_verified(tmp_path, monkeypatch, settings):
    settings.MEDIA_ROOT = str(tmp_path)  # the runs' files are the uploads the rows name
    monkeypatch.setattr(verification.enqueue, "enqueue", lambda *args, **kwargs: None)  # run below
    reports = []
    for i, (spec, world) in enumerate(_jobs(tmp_path)):
        spec["verify"] = verification.verify_spec()  # the cadence the platform asks agents for
        events = train(spec, nproc=2) if world == 2 else _run_in_process(spec, monkeypatch)
        report = recorded(spec, events, world, tmp_path)
        # Every other job (each template, and DDP) has its first stretch replayed: the
        # runtime's step 0 and the verifier's must be the same state.
        rng = _InOrder() if i % 2 else secrets.SystemRandom()
        assert verification.verification_run(report_id=report.pk, check=check_attempt, rng=rng) in (
            "passed", "failed")
        report.refresh_from_db()
        reports.append((spec["workdir"], world, report))
    assert len(reports) == 20
    rejected = [(w, world, r.status, r.reasons) for w, world, r in reports if r.status != "passed"]
    assert rejected == [], rejected  # 0 false rejections
    assert Job.objects.filter(status=Job.Status.COMPLETED).count() == 20
    # Each was really replayed, within the platform's share of its steps.
    shares = [r.compute_share for _, _, r in reports]
    assert all(r.segments for _, _, r in reports)
    firsts = [min(s["from_step"] for s in r.segments) for _, _, r in reports[1::2]]
    assert firsts == [0] * 10, firsts
    assert all(0 < share <= settings.VERIFY_REPLAY_SHARE + 1e-9 for share in shares), shares
