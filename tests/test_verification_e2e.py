"""Verification through the real pipeline: agents that cheat on purpose (COMPUTEMESH_FAULTS)
are caught, their work is disputed and not charged, the slash is queued on the chain
queue, and the job completes on an honest agent. Real parts as in test_execution_e2e:
PostgreSQL, Redis, daphne, a Celery worker on default,dispatch,verify, agent processes
and gloo process groups."""

import base64
import json
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from django.utils import timezone
from rest_framework.authtoken.models import Token

from marketplace.models import Dispute, Job, Organization, VerificationReport
from marketplace.selectors.metering import job_statement
from marketplace.services.accounts import organization_create
from marketplace.services.nodes import NodeSpec, node_create
from marketplace.services.offers import OfferSpec, offer_create
from marketplace.services.verification import verification_run
from workers.training import faults
from workers.verify import check_attempt

from .factories import UserFactory
from .stack import Stack, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path).start()
    yield s
    s.stop()


def _consumer(name: str, username: str) -> str:
    org = organization_create(name=name, kind=Organization.Kind.CONSUMER, sector="healthcare")
    return Token.objects.create(user=UserFactory(username=username, organization=org)).key


@pytest.fixture
def alice():
    return _consumer("Medisight", "alice")


@pytest.fixture
def bob():
    return _consumer("Other Clinic", "bob")


def cpu_node(provider: str) -> tuple[int, str]:
    org = organization_create(name=provider, kind=Organization.Kind.PROVIDER)
    node, token = node_create(provider=org, spec=NodeSpec(
        name="cpu-0", gpu_model="cpu", gpu_count=2, gpu_memory_gb=None, cpu_cores=2, ram_gb=8,
        disk_gb=20, region="EU-DE"))
    offer_create(provider=org, node=node, spec=OfferSpec(gpus_offered=2, price_per_gpu_hour=Decimal("0.50")))
    return node.pk, token


def job_body(params: dict) -> dict:
    return {"name": "Sepsis risk", "template": "tabular-classifier", "params": params,
            "dataset": "sample:breast-cancer", "nodes": 1, "gpus_per_node": 2, "gpu_models": ["cpu"],
            "max_price_per_gpu_hour": "1.00", "budget": "10.00",
            "deadline": (timezone.now() + timedelta(days=1)).isoformat()}


def _timeline(stack: Stack, token: str, job_id: int) -> list[str]:
    code, job = stack.http("GET", f"/api/v1/jobs/{job_id}/", token=token)
    assert code == 200, job
    if job["status"] == "failed":
        raise AssertionError(f"job failed: {job['timeline'][-3:]}")
    return [e["reason"] for e in job["timeline"]]


def _queued_slashes(stack: Stack) -> list[int]:
    """Dispute ids of the slash tasks waiting on the chain queue (no chain worker here)."""
    out = []
    for raw in redis.Redis.from_url(stack.redis_url).lrange("chain", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "workers.tasks_chain.dispute_slash":
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            out.append(args[0])
    return out


def _cheat_then_honest(stack, alice, *, faults: str, params: dict, reason: str):
    cheat_node, cheat_token = cpu_node("Cheap Cycles")
    honest_node, honest_token = cpu_node("Honest Compute")
    stack.agent("agent-cheat", cheat_token, faults=faults)
    code, job = stack.http("POST", "/api/v1/jobs/", token=alice, body=job_body(params))
    assert code == 201, job
    wait_for(lambda: "verification_failed" in _timeline(stack, alice, job["id"]), timeout=240,
             what="the cheat's work to fail verification")
    stack.agent("agent-honest", honest_token)
    wait_for(lambda: "verification_passed" in _timeline(stack, alice, job["id"]), timeout=240,
             what="the job to complete on the honest node")
    record = Job.objects.get(pk=job["id"])
    assert record.status == "completed" and cheat_node in record.excluded_nodes

    failed, passed = VerificationReport.objects.filter(job=record).order_by("attempt")
    assert (failed.attempt, failed.status, passed.status) == (1, "failed", "passed")
    cheat_part = record.assignments.get(attempt=1)
    honest_part = record.assignments.get(attempt=2)
    assert (cheat_part.node_id, honest_part.node_id) == (cheat_node, honest_node)
    assert honest_part.resume_step is None  # nothing of the failed work is resumed from

    dispute = Dispute.objects.get(job=record)
    assert (dispute.reason, dispute.assignment_id, dispute.status) == (reason, cheat_part.pk, "open")
    assert dispute.provider_id == cheat_part.node.provider_id and dispute.verification_id == failed.pk
    assert _queued_slashes(stack) == [dispute.pk]

    lines, total = job_statement(record)
    by_attempt = {line["attempt"]: line for line in lines}
    assert Decimal(by_attempt[1]["amount"]) == 0 and "failed verification" in by_attempt[1]["note"]
    assert Decimal(by_attempt[2]["amount"]) > 0 and total == Decimal(by_attempt[2]["amount"])
    return record, failed, passed


def test_skipped_steps_are_caught_disputed_not_charged_and_the_job_completes_elsewhere(stack, alice, bob):
    # 224 steps; the platform asks for checkpoints every 11 steps so that two segments fit in
    # 10 % of the training, and a cheat skipping every 10th update shows in any segment.
    record, failed, passed = _cheat_then_honest(
        stack, alice, faults="skip_steps=0.1", reason="replay_mismatch",
        params={"epochs": 8, "batch_size": 8, "hidden_units": 32})
    # A segment fails exactly when it spans a skipped update: the tail segment after the last
    # 11-step checkpoint (220..224) holds none, and its honest replay rightly passes. The
    # budget (22 steps) always takes at least one 11-step segment, which spans one.
    skipped = faults.parse("skip_steps=0.1")
    spans_skip = [any(skipped.skip(i) for i in range(s["from_step"], s["to_step"]))
                  for s in failed.segments]
    assert any(spans_skip) and [not s["passed"] for s in failed.segments] == spans_skip
    # Replaying every segment of one such run, the 19 that span a skipped update show
    # 9.5e-4..9.0e-3 (smallest late in training, where updates are small); honest ones 0.
    caught = [s["rel_l2"] for s, bad in zip(failed.segments, spans_skip, strict=True) if bad]
    assert all(d > 5 * failed.threshold for d in caught), (caught, failed.threshold)
    assert passed.segments and all(s["passed"] and s["rel_l2"] < 1e-6 for s in passed.segments)
    assert 0 < passed.compute_share <= 0.1

    # The report: the API names it, the owner downloads it, another tenant gets a 404.
    code, job = stack.http("GET", f"/api/v1/jobs/{record.pk}/", token=alice)
    verification = job["verification"]  # and how it was verified, said up front
    assert (verification["status"], verification["report_url"], verification["method"]["method"]) == (
        "passed", f"/api/v1/jobs/{record.pk}/verification/", "replay")
    code, report = stack.http("GET", job["verification"]["report_url"], token=alice)
    assert code == 200 and [r["status"] for r in report["reports"]] == ["failed", "passed"]
    assert report["reports"][0]["disputes"][0]["reason"] == "replay_mismatch"
    code, refused = stack.http("GET", job["verification"]["report_url"], token=bob)
    assert code == 404, refused
    code, _ = stack.http("GET", f"/api/v1/jobs/{record.pk}/verification/")
    assert code in (401, 403)

    # Run twice (acks_late redelivery): a check whose report is final does nothing; a twin of
    # a check whose worker died mid-way (its report still running) checks again and doubles
    # nothing: one dispute, one slash queued, one completion, no new placement.
    assert verification_run(report_id=failed.pk, check=check_attempt) == "failed"
    VerificationReport.objects.filter(pk=passed.pk).update(status="running")
    assert verification_run(report_id=passed.pk, check=check_attempt) == "passed"
    record.refresh_from_db()
    assert record.status == "completed" and record.attempt == 2
    assert record.events.filter(reason="verification_passed").count() == 1
    assert record.events.filter(reason="verification_failed").count() == 1
    assert Dispute.objects.filter(job=record).count() == 1 and len(_queued_slashes(stack)) == 1


def test_an_inflated_metric_is_caught_disputed_not_charged_and_the_job_completes_elsewhere(stack, alice):
    record, failed, passed = _cheat_then_honest(
        stack, alice, faults="inflate_metric=0.05", reason="metric_inflated",
        params={"epochs": 4, "batch_size": 16, "hidden_units": 32})
    # The training itself was honest: its replays pass; the metric it reported does not.
    assert failed.segments and all(s["passed"] for s in failed.segments)
    assert failed.metric_reported > failed.metric_measured + 0.01
    assert passed.metric_reported == passed.metric_measured == record.metric_value


def test_work_without_committed_checkpoints_is_disputed_not_charged_and_runs_elsewhere(stack, alice):
    # A provider that uploads no checkpoint leaves nothing to replay: it is not paid on the
    # strength of the final model alone.
    record, failed, passed = _cheat_then_honest(
        stack, alice, faults="withhold_checkpoints", reason="checkpoint_uncommitted",
        params={"epochs": 4, "batch_size": 16, "hidden_units": 32})
    assert not failed.segments and failed.replay_steps == 0
    assert not record.checkpoints.filter(assignment__attempt=1).exists()
    assert passed.segments and all(s["passed"] for s in passed.segments)


def test_a_corrupting_rank_1_in_a_two_node_job_is_named_and_alone_slashed(stack, alice):
    # Issue 12, item 5: node rank 1's agent sends the negation of its gradients into DDP's
    # all-reduce. Every rank ends with the same parameters, and the checkpoints look the
    # same whichever node did it. Before, the dispute named rank 0 and queued its slash;
    # then, nobody. Now each node's agent uploads its copy of every rank's gradient
    # commitments, and the replay names rank 1: its node alone is disputed and slashed.
    honest_node, honest_token = cpu_node("Honest Compute")
    cheat_node, cheat_token = cpu_node("Cheap Cycles")  # same price, listed later: rank 1
    stack.agent("agent-honest", honest_token)
    stack.agent("agent-cheat", cheat_token, faults="corrupt_gradients")
    body = {**job_body({"epochs": 4, "batch_size": 16, "hidden_units": 32}), "nodes": 2, "gpus_per_node": 1}
    code, job = stack.http("POST", "/api/v1/jobs/", token=alice, body=body)
    assert code == 201, job
    wait_for(lambda: "verification_failed" in _timeline(stack, alice, job["id"]), timeout=300,
             what="the corrupted work to fail verification")
    record = Job.objects.get(pk=job["id"])
    parts = {a.node_rank: a for a in record.assignments.filter(attempt=1)}
    assert {r: a.node_id for r, a in parts.items()} == {0: honest_node, 1: cheat_node}
    finished = record.events.get(reason="training_finished")
    assert len(set(finished.data["param_digests"])) == 1  # the ranks agree: no tell there
    # Every node's agent uploaded its own copy, and the copies are the same.
    copies = [[row for c in parts[r].gradient_commitments.order_by("to_step") for row in c.table]
              for r in (0, 1)]
    assert copies[0] == copies[1] and [row["step"] for row in copies[0]] == list(range(len(copies[0])))

    report = VerificationReport.objects.get(job=record, attempt=1)
    assert report.status == "failed" and not all(s["passed"] for s in report.segments)
    dispute = Dispute.objects.get(job=record)
    assert (dispute.reason, dispute.attributed, dispute.status) == ("replay_mismatch", True, "open")
    assert dispute.assignment_id == parts[1].pk and dispute.provider_id == parts[1].node.provider_id
    assert "rank 1 committed" in dispute.detail
    assert _queued_slashes(stack) == [dispute.pk]  # the cheat's stake, to the treasury
    record.refresh_from_db()
    assert cheat_node in record.excluded_nodes and honest_node not in record.excluded_nodes
    lines, total = job_statement(record)
    assert total == 0 and all("failed verification" in line["note"] for line in lines)
