"""`computemesh run job.yaml` on the real platform (daphne, a Celery worker, an agent process,
torch.distributed on CPU): the local CSV is uploaded, the job submitted, watched live over
its socket to completion, and the verified model downloaded, byte for byte the platform's."""

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token

from marketplace.models import Job, Organization
from marketplace.services.accounts import organization_create

from .factories import UserFactory
from .stack import Stack
from .test_execution_e2e import cpu_nodes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

JOB_FILE = """\
name: Sepsis risk from a terminal
template: tabular-classifier
data: vitals.csv          # uploaded by `run`
label_column: outcome
params: {epochs: 2, learning_rate: 0.01}
nodes: 1
gpus_per_node: 1
gpu_models: [cpu]
price_ceiling: 1.00
budget: 10
deadline: 1d
"""


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path).start()
    yield s
    s.stop()


def test_run_uploads_submits_watches_and_downloads_the_verified_model(stack, tmp_path):
    org = organization_create(name="Medisight", kind=Organization.Kind.CONSUMER, sector="healthcare")
    token = Token.objects.create(user=UserFactory(username="alice", organization=org)).key
    (node_token,) = cpu_nodes(1)
    stack.agent("agent-a", node_token)
    work = tmp_path / "work"
    work.mkdir()
    rng = random.Random(7)
    rows = [(rng.uniform(-1, 1), rng.uniform(-1, 1)) for _ in range(300)]
    (work / "vitals.csv").write_text("a,b,outcome\n" + "".join(f"{a:.4f},{b:.4f},{int(a + b > 0)}\n"
                                                             for a, b in rows))
    (work / "job.yaml").write_text(JOB_FILE)

    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPUTEMESH_")}
    env.update(COMPUTEMESH_URL=stack.base, COMPUTEMESH_TOKEN=token, XDG_CONFIG_HOME=str(tmp_path))
    result = subprocess.run([str(Path(sys.executable).with_name("computemesh")), "run", "job.yaml",
                             "--json", "-o", "models/"], cwd=work, env=env, capture_output=True,
                            text=True, timeout=240, check=False)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-2000:])
    assert result.stderr == ""
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    record = Job.objects.get()
    assert [x["type"] for x in lines[:2]] == ["uploaded", "submitted"] and lines[1]["id"] == record.pk
    assert record.dataset_ref == str(record.owner.datasets.get(name="vitals").pk)  # the upload
    assert record.status in ("completed", "settled") and record.metric_value > 0.8
    # Watched live: every stored progress point came out once, in order, and the last snapshot
    # is the completed job.
    seqs = [x["seq"] for x in lines if x["type"] == "metric"]
    assert seqs == list(record.metrics.order_by("seq").values_list("seq", flat=True)) and seqs
    snapshots = [x for x in lines if x["type"] == "job"]
    assert snapshots[-1]["status"] == "completed" and snapshots[-1]["progress"]["percent"] == 100
    stored = subprocess.run([str(Path(sys.executable).with_name("computemesh")), "jobs", "metrics",
                             str(record.pk), "--json"], env=env, capture_output=True, text=True,
                            timeout=60, check=True)
    assert [p["seq"] for p in json.loads(stored.stdout)] == seqs
    (downloaded,) = [x for x in lines if x["type"] == "downloaded"]
    model = Path(work / downloaded["path"])
    assert model.parent == work / "models"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == record.artifact_sha256
