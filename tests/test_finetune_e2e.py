"""A fine-tune from uploaded weights end to end on real parts (issue 16): the example
(examples/tasks/finetune) pretrained here, its state_dict and its code uploaded with the
client's resumable uploads, the job submitted with `weights`, funded on a real JSON-RPC node
(hardhat), trained by a real agent (two ranks in its sandbox, each loading the weights
before step 0), verified by replay in the verify worker's sandbox, and settled on chain.
That training started from the weights is checked bit for bit: the verifier's replay of
steps 0..10 from the weights gives the committed checkpoint at step 10, and the same replay
from the model's own initialisation does not. A file that does not fit the task's model
fails the job fast, with the tensors named and none of the provider's paths."""

import io
import subprocess
import sys
import zipfile
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import torch
from computemesh_client import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from marketplace.models import Job, Organization, Settlement, VerificationReport
from marketplace.services.accounts import organization_create
from marketplace.services.nodes import NodeSpec, node_create
from marketplace.services.offers import OfferSpec, offer_create
from marketplace.services.verification import check_inputs
from workers.agent import sandbox as sandboxing
from workers.verify.check import check_attempt

from .factories import UserFactory
from .payments import test_chain_integration as paid
from .stack import Stack, wait_for
from .test_execution_e2e import wait_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration,
              pytest.mark.skipif(not sandboxing.available(), reason="bubblewrap cannot build a sandbox "
                                                                    "here (apt-get install bubblewrap)")]
node, on_node = paid.node, paid.on_node  # the hardhat node, and this process on it (fixtures)
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tasks" / "finetune"
PARAMS = {"farm": 1, "samples": 2000, "epochs": 2, "batch_size": 32, "checkpoint_every": 10}


def custom_code_node(provider: str) -> str:
    org = organization_create(name=provider, kind=Organization.Kind.PROVIDER)
    machine, token = node_create(provider=org, spec=NodeSpec(
        name="cpu-0", gpu_model="cpu", gpu_count=2, gpu_memory_gb=None, cpu_cores=2, ram_gb=8,
        disk_gb=20, region="EU-DE"))
    offer_create(provider=org, node=machine, spec=OfferSpec(
        gpus_offered=2, price_per_gpu_hour=Decimal("3.00"), accepts_custom_code=True))
    return token


def pretrained(tmp_path: Path, *, hidden: int = 64) -> Path:
    """pretrain.py as a consumer runs it: farm 0's readings, a state_dict saved."""
    out = tmp_path / f"pretrained-{hidden}.pt"
    subprocess.run([sys.executable, str(EXAMPLE / "pretrain.py"), str(out), "--epochs", "3",
                    "--samples", "4000", "--hidden", str(hidden)], check=True, capture_output=True,
                   cwd=ROOT, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return out


def bundle_zip(tmp_path: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in ("task.py", "computemesh.toml"):
            z.write(EXAMPLE / name, name)
    path = tmp_path / "finetune.zip"
    path.write_bytes(buf.getvalue())
    return path


def job_body(bundle: int, weights: int, **over) -> dict:
    return {"name": "Farm 1 fine-tune", "bundle": bundle, "weights": weights, "dataset": "",
            "params": PARAMS, "nodes": 1, "gpus_per_node": 2, "gpu_models": ["cpu"],
            "max_price_per_gpu_hour": "5.00", "budget": "10.00",
            "deadline": (timezone.now() + timedelta(days=1)).isoformat(), **over}


def replay_first_segment(job: Job, *, with_weights: bool) -> dict:
    """The verifier's replay (workers.verify.check_attempt) of steps 0..10 from the initial
    state, against the committed checkpoint at step 10; one thread, as each rank had."""
    ckpt = job.checkpoints.get(step=10, committed_at__isnull=False)
    plan = {"template": "", "params": job.params, "world_size": 2, "segments": [(0, 10)],
            "checkpoints": {0: None, 10: ckpt.file.path}, "threshold": 1e-4, "check_model": False}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with check_inputs(job) as (dataset, task):
            if not with_weights:
                task = {k: v for k, v in task.items() if k != "weights"}
            return check_attempt({**plan, **task}, dataset)["segments"][0]
    finally:
        torch.set_num_threads(threads)


def test_a_fine_tune_starts_from_the_uploaded_weights_is_verified_and_settled(on_node, tmp_path):
    org, token = paid.consumer(name="Gridwise", username="erin")
    node_token = custom_code_node("Honest Compute")
    paid.chain_deploy()  # after the organizations: it gives each its development wallets
    weights_file, code = pretrained(tmp_path), bundle_zip(tmp_path)
    stack = Stack(tmp_path, queues="default,dispatch,verify,chain")
    stack.env.update({"ESCROW_ENABLED": "1", "CHAIN_RPC_URL": on_node, "SETTLEMENT_INTERVAL_S": "2",
                      "CHAIN_RESEND_AFTER_S": "1"})
    stack.start()
    try:
        stack.agent("finetune-agent", node_token)
        with Client(stack.base, token) as client:
            weights = client.upload_weights(weights_file, chunk_size=64 << 10)
            bundle = client.upload_bundle(code, chunk_size=64 << 10)
        assert weights["kind"] == "weights" and weights["entries"] == 6, weights
        status, job = stack.http("POST", "/api/v1/jobs/", token=token,
                                 body=job_body(bundle["id"], weights["id"]))
        assert status == 201 and job["weights"] == weights["id"], job
        status, funded = stack.http("POST", f"/api/v1/jobs/{job['id']}/fund/", token=token,
                                    body={"amount": "10"})
        assert status == 200, funded
        done = wait_status(stack, token, job["id"], {"settled"}, timeout=600)
    finally:
        stack.stop()

    record = Job.objects.get(pk=job["id"])
    report = VerificationReport.objects.get(job=record, attempt=record.attempt)
    assert report.status == "passed" and report.replay_steps > 0, report.reasons
    assert report.segments and all(s["passed"] for s in report.segments)
    reasons = [e["reason"] for e in done["timeline"]]
    assert reasons.index("escrow_funded") < reasons.index("started") < reasons.index("escrow_settled")
    settlement = Settlement.objects.get(job=record)
    assert settlement.charged > 0 and settlement.charged + settlement.refunded == Decimal("10")
    # It trained from the weights: replayed from them, steps 0..10 give the committed
    # checkpoint exactly; from the model's own initialisation they do not.
    from_weights = replay_first_segment(record, with_weights=True)
    assert from_weights["passed"] and from_weights["rel_l2"] < 1e-6, from_weights
    from_scratch = replay_first_segment(record, with_weights=False)
    assert not from_scratch["passed"] and from_scratch["rel_l2"] > 1e-2, from_scratch
    # And it shows in the loss: farm 0's weights start near 0.8 on farm 1, a fresh network
    # near ln 4 = 1.39.
    first = list(record.metrics.filter(loss__isnull=False).order_by("seq").values_list("loss", flat=True)[:5])
    assert len(first) == 5 and sum(first) / 5 < 1.15, first
    assert record.metric_name == "accuracy" and record.metric_value > 0.8


def test_weights_that_do_not_fit_the_model_fail_the_job_with_the_tensors_named(tmp_path):
    org = organization_create(name="Gridwise", kind=Organization.Kind.CONSUMER, sector="energy")
    token = Token.objects.create(user=UserFactory(username="erin", organization=org)).key
    node_token = custom_code_node("Honest Compute")
    weights_file, code = pretrained(tmp_path, hidden=32), bundle_zip(tmp_path)  # the job asks for 64
    stack = Stack(tmp_path).start()
    try:
        stack.agent("finetune-agent", node_token)
        with Client(stack.base, token) as client:
            weights = client.upload_weights(weights_file)
            bundle = client.upload_bundle(code)
        status, job = stack.http("POST", "/api/v1/jobs/", token=token,
                                 body=job_body(bundle["id"], weights["id"]))
        assert status == 201, job
        wait_for(lambda: Job.objects.get(pk=job["id"]).status == "failed", timeout=300,
                 what="the job with unfitting weights to fail")
        _, done = stack.http("GET", f"/api/v1/jobs/{job['id']}/", token=token)
    finally:
        stack.stop()
    last = done["timeline"][-1]
    assert last["reason"] == "weights_error", done["timeline"][-3:]
    assert "body.0.weight is (32, 16), the model's (64, 16)" in last["message"], last
    assert "/assignments/" not in last["message"] and str(tmp_path) not in last["message"]
    assert "Traceback" not in last["message"]
    assert Job.objects.get(pk=job["id"]).attempt == 1  # not retried on another node
