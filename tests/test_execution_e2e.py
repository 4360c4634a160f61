"""A job really trains: API → Celery worker → agent processes → torch.distributed → result.

Real parts only: PostgreSQL, Redis (broker and channel layer), daphne, a Celery worker
with beat, agent processes and gloo process groups; one two-node job is paid through the
escrow on a real JSON-RPC node (hardhat).
"""

import hashlib
import subprocess
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token

from marketplace.chain import deploy
from marketplace.models import Assignment, Job, Organization, Settlement
from marketplace.services.accounts import organization_create
from marketplace.services.nodes import NodeSpec, node_create
from marketplace.services.offers import OfferSpec, offer_create

from .factories import UserFactory
from .payments import test_chain_integration as paid
from .payments.support import units
from .stack import Stack, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]
node, on_node = paid.node, paid.on_node  # the hardhat node, and this process on it (fixtures)


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path).start()
    yield s
    s.stop()


@pytest.fixture
def consumer_token():
    org = organization_create(name="Medisight", kind=Organization.Kind.CONSUMER, sector="healthcare")
    user = UserFactory(username="alice", organization=org)
    return Token.objects.create(user=user).key


def cpu_nodes(count: int, *, price="0.05") -> list[str]:
    provider = organization_create(name="Local CPU Lab", kind=Organization.Kind.PROVIDER)
    tokens = []
    for i in range(count):
        machine, token = node_create(provider=provider, spec=NodeSpec(
            name=f"cpu-{i}", gpu_model="cpu", gpu_count=2, gpu_memory_gb=None, cpu_cores=2, ram_gb=8,
            disk_gb=20, region="EU-DE"))
        offer_create(provider=provider, node=machine,
                     spec=OfferSpec(gpus_offered=2, price_per_gpu_hour=Decimal(price)))
        tokens.append(token)
    return tokens


def job_body(**over) -> dict:
    body = {"name": "Sepsis risk", "template": "tabular-classifier", "params": {"epochs": 10},
            "dataset": "sample:breast-cancer", "nodes": 1, "gpus_per_node": 2, "gpu_models": ["cpu"],
            "max_price_per_gpu_hour": "1.00", "budget": "10.00",
            "deadline": (timezone.now() + timedelta(days=1)).isoformat()}
    return {**body, **over}


def wait_status(stack: Stack, token: str, job_id: int, statuses: set[str], timeout: float) -> dict:
    def poll():
        code, job = stack.http("GET", f"/api/v1/jobs/{job_id}/", token=token)
        assert code == 200, job
        if job["status"] in ("failed", "cancelled") and job["status"] not in statuses:
            raise AssertionError(f"job ended {job['status']}: {job['timeline'][-3:]}")
        return job if job["status"] in statuses else None
    return wait_for(poll, timeout=timeout, what=f"job {job_id} to become {statuses}")


def test_a_job_from_the_api_trains_on_an_agent_and_completes(stack, consumer_token):
    (node_token,) = cpu_nodes(1)
    stack.agent("agent-a", node_token)
    code, job = stack.http("POST", "/api/v1/jobs/", token=consumer_token, body=job_body())
    assert code == 201, job
    done = wait_status(stack, consumer_token, job["id"], {"completed"}, timeout=180)
    record = Job.objects.get(pk=job["id"])
    assert record.metric_name == "accuracy" and record.metric_value > 0.85
    assert record.current_step == record.total_steps > 0
    assert record.metrics.count() > 0 and record.checkpoints.filter(committed_at__isnull=False).exists()
    with record.artifact.open("rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == record.artifact_sha256
    reasons = [e["reason"] for e in done["timeline"]]
    assert reasons[:3] == ["submitted", "escrow_disabled", "matching"]
    assert reasons[-2:] == ["training_finished", "verification_passed"]
    code, artifact = stack.http("GET", f"/api/v1/jobs/{job['id']}/artifact/", token=consumer_token,
                                raw=True)
    assert code == 200 and hashlib.sha256(artifact).hexdigest() == record.artifact_sha256


# A job far longer than any test that stops it on purpose, whatever the machine's speed
# (small batches through a wide network); the test cancels it or kills its nodes.
LONG = {"epochs": 200, "batch_size": 8, "hidden_units": 512, "hidden_layers": 4}


def two_node_job(stack: Stack, token: str, **params) -> dict:
    """Two CPU nodes with their agents, and a job that takes both (2 processes each)."""
    for i, node_token in enumerate(cpu_nodes(2)):
        stack.agent(f"agent-{i}", node_token)
    code, job = stack.http("POST", "/api/v1/jobs/", token=token,
                           body=job_body(nodes=2, params=params))
    assert code == 201, job
    return job


def test_a_two_node_job_runs_world_size_four_with_identical_parameters(stack, consumer_token):
    job = two_node_job(stack, consumer_token, epochs=6)
    wait_status(stack, consumer_token, job["id"], {"completed"}, timeout=240)
    record = Job.objects.get(pk=job["id"])
    ranks = list(record.assignments.order_by("node_rank").values_list("node_rank", "status", "node_id"))
    assert [(r, s) for r, s, _ in ranks] == [(0, "succeeded"), (1, "succeeded")]
    assert ranks[0][2] != ranks[1][2]
    finished = record.events.get(reason="training_finished")
    digests = finished.data["param_digests"]
    assert len(digests) == 4 and len(set(digests)) == 1
    # Each node's traffic is stored with its part: under DDP both send the gradients'
    # ring all-reduce share for the same steps, and that is what DDP sends.
    sent = list(record.assignments.order_by("node_rank").values_list("comm_bytes", "comm_bytes_ddp"))
    assert sent[0] == sent[1] and sent[0][0] == sent[0][1] > 0


def test_a_killed_agent_is_replaced_and_the_job_resumes_from_its_checkpoint(stack, consumer_token):
    first, second = cpu_nodes(2)
    stack.agent("agent-first", first)
    code, job = stack.http("POST", "/api/v1/jobs/", token=consumer_token, body=job_body(
        template="image-classifier", dataset="sample:digits",
        params={"epochs": 40, "checkpoint_every": 10, "batch_size": 32}))
    assert code == 201, job
    record = Job.objects.get(pk=job["id"])
    wait_for(lambda: record.checkpoints.filter(committed_at__isnull=False, step__gte=20).exists(),
             timeout=180, what="a committed checkpoint")
    record.refresh_from_db()
    assert record.current_step < record.total_steps, "the job ended before the kill: make it longer"
    # The machine dies: the agent and its training ranks, all at once.
    stack.kill("agent-first")
    subprocess.run(["pkill", "-KILL", "-f", str(stack.tmp / "agent-first")], check=False)
    stack.agent("agent-second", second)
    done = wait_status(stack, consumer_token, job["id"], {"completed"}, timeout=240)
    reasons = [e["reason"] for e in done["timeline"]]
    assert "node_lost" in reasons
    lost, resumed = Assignment.objects.filter(job=record).order_by("attempt")
    assert lost.status == "lost" and resumed.status == "succeeded"
    assert resumed.resume_step >= 20
    record.refresh_from_db()
    first_step_after = record.metrics.filter(assignment=resumed).order_by("seq").first().step
    assert first_step_after >= resumed.resume_step  # not restarted from 0
    assert record.current_step == record.total_steps


def test_a_dataset_the_template_cannot_use_fails_the_job_fast_with_the_reason(stack, consumer_token):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from marketplace.services.datasets import dataset_upload

    (node_token,) = cpu_nodes(1)
    stack.agent("agent-a", node_token)
    org = Organization.objects.get(name="Medisight")
    rows = "\n".join(f"{i},{i * 2},1" for i in range(40))  # one class only
    ds = dataset_upload(owner=org, actor=None, name="one-class.csv",
                        uploaded_file=SimpleUploadedFile("one-class.csv", f"a,b,label\n{rows}\n".encode()))
    code, job = stack.http("POST", "/api/v1/jobs/", token=consumer_token, body=job_body(dataset=str(ds.pk)))
    assert code == 201, job
    done = wait_status(stack, consumer_token, job["id"], {"failed"}, timeout=120)
    last = done["timeline"][-1]
    assert last["reason"] == "dataset_error" and "at least two classes" in last["message"]
    assert Job.objects.get(pk=job["id"]).attempt == 1  # not retried elsewhere


def test_an_agent_with_a_wrong_token_is_refused_and_says_so(stack):
    proc = stack.agent("agent-bad", "cmn_not_a_token")
    assert proc.wait(timeout=60) == 2
    log = (stack.logs / "agent-bad.log").read_text()
    assert "refused this agent's token" in log


def _training_processes(workdir) -> list[int]:
    """Pids of the training ranks an agent started under `workdir` (their command lines name
    files inside it; the agent's own names the folder alone)."""
    inside = f"{workdir}/".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and inside in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return pids


def test_a_two_node_job_cancelled_by_its_owner_stops_on_every_node(stack, consumer_token):
    job = two_node_job(stack, consumer_token, **LONG)
    record = Job.objects.get(pk=job["id"])
    wait_for(lambda: record.metrics.filter(step__gte=5).exists(), timeout=150,
             what="both nodes to be training")
    workdirs = [stack.tmp / f"agent-{i}" for i in range(2)]
    assert all(_training_processes(w) for w in workdirs)  # ranks run on both machines

    code, cancelled = stack.http("POST", f"/api/v1/jobs/{record.pk}/cancel/", token=consumer_token)
    assert code == 200 and cancelled["status"] == "cancelled", cancelled
    for i, workdir in enumerate(workdirs):
        wait_for(lambda w=workdir: not _training_processes(w), timeout=30,
                 what=f"agent-{i}'s training ranks to stop")
        log = stack.logs / f"agent-{i}.log"  # the agent says why once its ranks are gone
        wait_for(lambda log=log: "stopped: job cancelled by alice" in log.read_text(), timeout=10,
                 what=f"agent-{i} to say why it stopped")
    statuses = list(record.assignments.order_by("node_rank").values_list("node_rank", "status"))
    assert statuses == [(0, "cancelled"), (1, "cancelled")]
    record.refresh_from_db()
    assert record.current_step < record.total_steps


def test_a_two_node_job_paid_through_the_escrow_pays_both_providers_on_chain(on_node, tmp_path):
    """The escrow on (hardhat's JSON-RPC node): funded from the consumer's custodial wallet,
    trained on two providers' nodes by real agents, verified, settled; the chain then owes
    each provider, the treasury and the consumer exactly what the database recorded."""
    org, token = paid.consumer()
    providers = []
    for name in ("Carol CPU Lab", "Dave CPU Lab"):
        provider = organization_create(name=name, kind=Organization.Kind.PROVIDER)
        machine, node_token = node_create(provider=provider, spec=NodeSpec(
            name=f"{name.split()[0].lower()}-0", gpu_model="cpu", gpu_count=2, gpu_memory_gb=None,
            cpu_cores=2, ram_gb=8, disk_gb=20, region="EU-DE"))
        offer_create(provider=provider, node=machine,
                     spec=OfferSpec(gpus_offered=2, price_per_gpu_hour=Decimal("3.00")))
        providers.append((provider, node_token))
    paid.chain_deploy()  # after the organizations: it gives each its development wallets
    wallet = org.wallets.get().address
    stack = Stack(tmp_path, queues="default,dispatch,verify,chain")
    stack.env.update({"ESCROW_ENABLED": "1", "CHAIN_RPC_URL": on_node, "SETTLEMENT_INTERVAL_S": "2",
                      "CHAIN_RESEND_AFTER_S": "1"})
    stack.start()
    try:
        for i, (_, node_token) in enumerate(providers):
            stack.agent(f"paid-agent-{i}", node_token)
        code, job = stack.http("POST", "/api/v1/jobs/", token=token,
                               body=job_body(nodes=2, params={"epochs": 4}, max_price_per_gpu_hour="5.00"))
        assert code == 201 and job["status"] == "submitted", job
        code, funded = stack.http("POST", f"/api/v1/jobs/{job['id']}/fund/", token=token,
                                  body={"amount": "10"})
        assert code == 200, funded
        done = wait_status(stack, token, job["id"], {"settled"}, timeout=300)
    finally:
        stack.stop()

    reasons = [e["reason"] for e in done["timeline"]]
    assert reasons.index("escrow_funded") < reasons.index("started") < reasons.index("escrow_settled")
    record = Job.objects.get(pk=job["id"])
    assert list(record.assignments.order_by("node_rank").values_list("node_rank", "status")) == \
        [(0, "succeeded"), (1, "succeeded")]
    settlement = Settlement.objects.get(job=record)
    payouts = {p.address: p.amount for p in settlement.payouts.all()}
    addresses = [p.wallets.get(is_payout=True).address for p, _ in providers]
    assert set(payouts) == set(addresses) and all(amount > 0 for amount in payouts.values()), payouts
    assert sum(payouts.values()) + settlement.fee == settlement.charged
    assert settlement.charged + settlement.refunded == Decimal("10")
    for address in addresses:  # what the chain owes each provider is what the database paid
        assert paid.owed(address) == units(payouts[address])
    assert paid.owed(deploy.treasury_address()) == units(settlement.fee)
    assert paid.owed(wallet) == units(settlement.refunded)
    assert paid.settled_events() == [record.escrow.key]  # closed once
