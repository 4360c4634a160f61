"""A consumer's own task end to end on real parts (issue 16): the worked example
(examples/tasks/vibration) and its data uploaded with the client's resumable uploads, a
job on two providers' nodes that accept consumers' code, DDP across the two agents inside
their sandboxes, the verify worker replaying the task's steps inside its own sandbox, and
the model released once verification passed. Real parts as in test_execution_e2e:
PostgreSQL, Redis, daphne, a Celery worker on default,dispatch,verify, agent processes."""

import io
import subprocess
import sys
import zipfile
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from computemesh_client import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from marketplace.models import Job, Organization, VerificationReport
from marketplace.services.accounts import organization_create
from marketplace.services.nodes import NodeSpec, node_create
from marketplace.services.offers import OfferSpec, offer_create
from workers.agent import sandbox as sandboxing

from .factories import UserFactory
from .stack import Stack, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration,
              pytest.mark.skipif(not sandboxing.available(), reason="bubblewrap cannot build a sandbox "
                                                                    "here (apt-get install bubblewrap)")]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tasks" / "vibration"


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path).start()
    yield s
    s.stop()


def custom_code_node(provider: str) -> tuple[int, str]:
    org = organization_create(name=provider, kind=Organization.Kind.PROVIDER)
    node, token = node_create(provider=org, spec=NodeSpec(
        name="cpu-0", gpu_model="cpu", gpu_count=1, gpu_memory_gb=None, cpu_cores=2, ram_gb=8,
        disk_gb=20, region="EU-DE"))
    offer_create(provider=org, node=node, spec=OfferSpec(gpus_offered=1, price_per_gpu_hour=Decimal("0.50"),
                                                          accepts_custom_code=True))
    return node.pk, token


def zipped(files: dict[str, Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, path in files.items():
            z.write(path, name)
    return buf.getvalue()


def test_a_consumers_own_task_trains_on_two_nodes_is_replayed_and_released(stack, tmp_path):
    org = organization_create(name="Gridwise", kind=Organization.Kind.CONSUMER, sector="energy")
    token = Token.objects.create(user=UserFactory(username="erin", organization=org)).key
    nodes = [custom_code_node("Honest Compute"), custom_code_node("Second Source")]
    for i, (_, node_token) in enumerate(nodes):
        stack.agent(f"agent-{i}", node_token)

    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(tmp_path / "data"),
                    "--windows", "600"], check=True, capture_output=True)
    (tmp_path / "data.zip").write_bytes(zipped({"vibration.csv": tmp_path / "data" / "vibration.csv"}))
    (tmp_path / "task.zip").write_bytes(zipped({"task.py": EXAMPLE / "task.py",
                                                "computemesh.toml": EXAMPLE / "computemesh.toml"}))
    with Client(stack.base, token) as client:
        dataset = client.upload_dataset_resumable(tmp_path / "data.zip", name="pump-windows.zip",
                                                  chunk_size=64 << 10)
        bundle = client.upload_bundle(tmp_path / "task.zip", chunk_size=64 << 10)
        assert bundle["entry"] == "task:VibrationFaults" and bundle["runtime"] == "cm-runtime-2026.12"
        code, job = stack.http("POST", "/api/v1/jobs/", token=token, body={
            "name": "Pump faults", "bundle": bundle["id"], "dataset": str(dataset["id"]),
            "params": {"epochs": 3, "batch_size": 32, "checkpoint_every": 10},
            "nodes": 2, "gpus_per_node": 1, "gpu_models": ["cpu"], "max_price_per_gpu_hour": "1.00",
            "budget": "10.00", "deadline": (timezone.now() + timedelta(days=1)).isoformat()})
        assert code == 201, job
        wait_for(lambda: Job.objects.get(pk=job["id"]).status in ("completed", "failed", "interrupted"),
                 timeout=600, what="the bundle job to finish and be verified")
        record = Job.objects.get(pk=job["id"])
        report = VerificationReport.objects.get(job=record, attempt=record.attempt)
        assert record.status == "completed", (record.status, report.reasons)
        parts = record.assignments.filter(attempt=record.attempt)
        assert sorted(a.node_id for a in parts) == sorted(n for n, _ in nodes)
        # Its steps were replayed (the task gives the same bits twice), not only evaluated.
        assert report.status == "passed" and report.replay_steps > 0
        assert report.segments and all(s["passed"] for s in report.segments)
        assert not any("does not give the same bits" in r for r in report.reasons)
        # Each uploaded checkpoint was checked (its model built by the task, in the sandbox).
        statuses = set(record.checkpoints.values_list("status", flat=True))
        assert statuses and statuses <= {"valid", "verified"}, statuses
        model = client.download_model(record.pk, tmp_path / "model.pt")
        assert Path(model).stat().st_size > 0
    # Each node's sandbox was confined to its peers (the sandbox's "peers" network).
    for i in range(2):
        # As one line: the agent's terminal output wraps at the console's width.
        log = " ".join((stack.logs / f"agent-{i}.log").read_text().split())
        assert "multi-node sandboxes: confined to their peers" in log, log[-2000:]
        assert "sandboxed; network: the host's, confined to its peers (127.0.0.1)" in log, log[-2000:]
