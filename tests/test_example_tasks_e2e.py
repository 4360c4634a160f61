"""The shipped examples (examples/tasks/imaging and examples/tasks/forecaster) end to end
through the API, as their READMEs tell a consumer to run them (issue 16): the example's
own make_data.py builds the data, the client uploads the bundle and the data (resumable),
the quote says the task will be verified by replay (the determinism check ran on the verify
worker), the job is submitted and funded through the escrow on a real JSON-RPC node
(hardhat), trained with DDP by a real agent inside its sandbox, replayed by the verifier,
settled on chain, and its model downloaded.

Real parts as in test_bundle_e2e and test_execution_e2e: PostgreSQL, Redis, daphne, a
Celery worker with beat on default,dispatch,verify,chain, agent processes, hardhat. One
node with two processes: a multi-node bundle needs a node that can firewall its sandbox to
its peers (root + nftables), which test_bundle_e2e and test_sandbox_network cover."""

import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from computemesh_client import Client
from django.utils import timezone

from marketplace.models import Job, Node, Organization, Settlement, VerificationReport
from marketplace.services.accounts import organization_create
from marketplace.services.nodes import NodeSpec, node_create
from marketplace.services.offers import OfferSpec, offer_create
from workers.agent import sandbox as sandboxing

from .payments import test_chain_integration as paid
from .payments.support import units
from .stack import Stack, wait_for
from .test_bundle_e2e import zipped

# 572 s (imaging) and 345 s (forecaster) measured on a shared, loaded 2-core machine.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.timeout(1500),
              pytest.mark.skipif(not sandboxing.available(), reason="bubblewrap cannot build a sandbox "
                                                                    "here (apt-get install bubblewrap)")]
node, on_node = paid.node, paid.on_node  # the hardhat node, and this process on it (fixtures)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "tasks"
BUDGET = Decimal("10")


@dataclass(frozen=True)
class Example:
    folder: str
    entry: str
    sector: str
    make_data: tuple[str, ...]  # small: the test's steps count, not the README's
    data: str  # what to upload, relative to the folder make_data.py wrote
    params: dict
    metric: str


IMAGING = Example("imaging", "task:LesionClassifier", "healthcare", ("--per-class", "60"), "",
                  {"epochs": 4, "batch_size": 16, "checkpoint_every": 4}, "accuracy")
FORECASTER = Example("forecaster", "task:LoadForecaster", "energy", ("--days", "30"), "load.csv",
                     {"epochs": 3, "batch_size": 64, "checkpoint_every": 4, "channels": 16}, "mae")


def custom_code_provider() -> tuple[Organization, str]:
    """A provider whose CPU node (two training processes) accepts consumers' code."""
    org = organization_create(name="Honest Compute", kind=Organization.Kind.PROVIDER)
    machine, token = node_create(provider=org, spec=NodeSpec(
        name="cpu-0", gpu_model="cpu", gpu_count=2, gpu_memory_gb=None, cpu_cores=2, ram_gb=8,
        disk_gb=20, region="EU-DE"))
    offer_create(provider=org, node=machine, spec=OfferSpec(
        gpus_offered=2, price_per_gpu_hour=Decimal("3.00"), accepts_custom_code=True))
    return org, token


def build(example: Example, tmp: Path) -> tuple[Path, Path]:
    """(bundle, data) as the example's README builds them."""
    folder = EXAMPLES / example.folder
    subprocess.run([sys.executable, str(folder / "make_data.py"), str(tmp / "data"), *example.make_data],
                   check=True, capture_output=True, timeout=120)
    bundle = tmp / f"{example.folder}.zip"
    bundle.write_bytes(zipped({name: folder / name for name in ("task.py", "computemesh.toml")}))
    if example.data:
        return bundle, tmp / "data" / example.data
    data = tmp / "data.zip"  # the class folders at the zip's root
    data.write_bytes(zipped({p.relative_to(tmp / "data").as_posix(): p
                             for p in sorted((tmp / "data").rglob("*")) if p.is_file()}))
    return bundle, data


@pytest.mark.parametrize("example", [IMAGING, FORECASTER], ids=lambda e: e.folder)
def test_the_example_is_uploaded_quoted_funded_trained_verified_and_settled(example, on_node, tmp_path):
    consumer, token = paid.consumer(name="Example Co", username=f"{example.folder}-user")
    provider, node_token = custom_code_provider()
    paid.chain_deploy()  # after the organizations: it gives each its development wallets
    bundle_file, data_file = build(example, tmp_path)
    stack = Stack(tmp_path, queues="default,dispatch,verify,chain")  # its own redis-server
    stack.env.update({"ESCROW_ENABLED": "1", "CHAIN_RPC_URL": on_node, "SETTLEMENT_INTERVAL_S": "2",
                      "CHAIN_RESEND_AFTER_S": "1"})
    stack.start()
    try:
        stack.agent("agent-0", node_token)
        wait_for(lambda: Node.objects.filter(status="online", runtime="cm-runtime-2026.12").exists(),
                 timeout=60, what="the agent to connect and name its runtime")
        with Client(stack.base, token) as client:
            bundle = client.upload_bundle(bundle_file, chunk_size=64 << 10)
            assert (bundle["entry"], bundle["runtime"]) == (example.entry, "cm-runtime-2026.12")
            dataset = client.upload_dataset_resumable(data_file, chunk_size=64 << 10)
            spec = {"name": f"{example.folder} example", "bundle": bundle["id"],
                    "dataset": str(dataset["id"]), "params": example.params, "nodes": 1,
                    "gpus_per_node": 2, "gpu_models": ["cpu"], "max_price_per_gpu_hour": "5.00",
                    "budget": str(BUDGET), "deadline": (timezone.now() + timedelta(days=1)).isoformat()}

            # The quote places it on the custom-code offer and, once the verify worker has
            # replayed a few steps twice, says the work will be verified by replay.
            def replayable():
                quote = client.quote(spec)
                assert quote["feasible"] is True, quote["reasons"]
                method = quote["verification"]["method"]
                assert method in ("checking", "replay"), quote["verification"]
                return quote if method == "replay" else None
            quote = wait_for(replayable, timeout=300, every=1, what="the determinism check")
            assert quote["verification"]["determinism"]["deterministic"] is True

            job = client.submit(spec)
            assert job["status"] == "submitted", job
            assert client.fund(job["id"], amount=str(BUDGET))["id"] == job["id"]
            wait_for(lambda: Job.objects.get(pk=job["id"]).status in ("settled", "failed", "refunded"),
                     timeout=900, what=f"the {example.folder} job to be trained, verified and settled")
            record = Job.objects.get(pk=job["id"])
            report = VerificationReport.objects.get(job=record, attempt=record.attempt)
            assert record.status == "settled", (record.status, report.reasons)
            model = client.download_model(record.pk, tmp_path / "model.pt")
    finally:
        stack.stop()

    reasons = list(record.events.order_by("id").values_list("reason", flat=True))
    assert reasons.index("escrow_funded") < reasons.index("started") < reasons.index("escrow_settled")
    assert record.metric_name == example.metric and record.metric_value is not None
    # Two processes trained it with DDP and ended with the same parameters.
    digests = record.events.get(reason="training_finished").data["param_digests"]
    assert len(digests) == 2 and len(set(digests)) == 1
    # Its steps were replayed in the verifier's sandbox, not only evaluated.
    assert report.status == "passed" and report.replay_steps > 0
    assert report.segments and all(s["passed"] for s in report.segments)
    assert Path(model).stat().st_size > 0
    # The escrow paid the provider what the database recorded and refunded the rest.
    settlement = Settlement.objects.get(job=record)
    payout = provider.wallets.get(is_payout=True).address
    assert {p.address for p in settlement.payouts.all()} == {payout}
    assert settlement.charged + settlement.refunded == BUDGET and settlement.charged > 0
    assert paid.owed(payout) == units(sum(p.amount for p in settlement.payouts.all()))
    assert paid.owed(consumer.wallets.get().address) == units(settlement.refunded)
