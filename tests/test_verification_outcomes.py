"""Verification always ends, and blames only whom it can (issue 12, items 5 and 6), through
the real verify task in a real Celery worker: the agent's uploads and messages go through
the platform's own endpoints and ingest, the attempt's end queues the check on commit.

Before: a model that did not load raised out of the check and left the job `verifying` for
ever (deposit locked, no dispute); any other error did the same; and a failed check always
opened a dispute against node rank 0 and queued a slash of its stake, even when a
corrupting rank 1 had caused it. Then: such a dispute named nobody; now the per-rank
gradient commitments every node uploads name rank 1 when every node's copy agrees."""

import json

import pytest

from marketplace.models import Dispute, Job, VerificationReport
from marketplace.services import staking, verification
from workers.training import replay
from workers.verify import check_attempt

from . import verify_support
from .stack import wait_for
from .verify_support import (
    Agent,
    commitments_body,
    cpu_node,
    queued,
    running_job,
    saved,
    trained_segment,
    zip_garbage,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.timeout(600)]
verify_worker = verify_support.verify_worker  # a fixture
S = Job.Status
SLASH = "workers.tasks_chain.dispute_slash"


def _left_verifying(job: Job) -> Job:
    def moved():
        job.refresh_from_db()
        return job.status != S.VERIFYING and VerificationReport.objects.filter(
            job=job, status__in=verification.FINAL).exists()

    wait_for(moved, timeout=240, what="the job to leave verifying")
    return job


def test_a_model_that_does_not_load_ends_the_check_with_a_dispute(client, verify_worker):
    node = cpu_node()
    job, parts = running_job([node])
    trained_segment(client, parts, world=1)
    Agent(client, parts[0]).finish(step=10, artifact=zip_garbage(), metric="accuracy", value=0.9)
    assert Job.objects.get(pk=job.pk).status == S.VERIFYING

    job = _left_verifying(job)
    assert job.status == S.INTERRUPTED and node.pk in job.excluded_nodes
    report = VerificationReport.objects.get(job=job)
    dispute = Dispute.objects.get(job=job)
    assert report.status == "failed" and report.segments and all(s["passed"] for s in report.segments)
    assert (dispute.reason, dispute.attributed) == ("artifact_mismatch", True)
    assert dispute.assignment_id == parts[0].pk
    assert "does not load" in dispute.detail
    # Rank 0 alone uploaded the model: the fault is its own, and its slash is queued.
    assert queued(verify_worker, "chain") == [SLASH]


def test_a_check_that_keeps_failing_ends_after_bounded_retries_for_staff(client, verify_worker):
    # The platform cannot load this job's data (a fault of ours, not the provider's): every
    # run of the check raises.
    node = cpu_node()
    job, parts = running_job([node])
    Job.objects.filter(pk=job.pk).update(dataset_ref="sample:gone")
    Agent(client, parts[0]).finish(step=10, artifact=saved({"model": {}}), metric="accuracy", value=0.9)

    job = _left_verifying(job)
    report = VerificationReport.objects.get(job=job)
    assert (report.status, report.runs) == ("error", verification.VERIFY_MAX_RUNS)
    assert "DatasetError" in report.reasons[0]
    dispute = Dispute.objects.get(job=job)
    assert (dispute.reason, dispute.attributed, dispute.status) == ("verification_error", False, "open")
    assert job.status == S.INTERRUPTED and node.pk not in job.excluded_nodes  # nothing known against it
    assert job.events.filter(reason="verification_error").count() == 1
    assert queued(verify_worker, "chain") == []  # no slash: staff review it
    # A redelivered task finds the report final and does nothing more.
    assert verification.verification_run(report_id=report.pk, check=check_attempt) == "error"
    assert Dispute.objects.filter(job=job).count() == 1


def test_a_corrupting_rank_1_is_named_by_its_commitments_and_alone_slashed(client, verify_worker):
    honest, mallory = cpu_node(), cpu_node()
    job, parts = running_job([honest, mallory])
    witness = replay.Witness(0)
    end = trained_segment(client, parts, world=2, corrupt_rank=1, witness=witness)
    body = commitments_body(witness)  # both nodes' leaders got the same table
    for part in parts:
        assert Agent(client, part).put("commitments/10/", body).status_code == 201
    Agent(client, parts[1]).finish(step=10)
    Agent(client, parts[0]).finish(step=10, artifact=saved({"model": end}), metric="accuracy", value=None)

    job = _left_verifying(job)
    report = VerificationReport.objects.get(job=job)
    assert report.status == "failed" and [s["passed"] for s in report.segments] == [True, False]
    dispute = Dispute.objects.get(job=job)
    assert (dispute.reason, dispute.attributed) == ("replay_mismatch", True)
    assert dispute.assignment_id == parts[1].pk
    assert dispute.provider_id == mallory.provider_id and "At step 5, rank 1 committed" in dispute.detail
    assert queued(verify_worker, "chain") == [SLASH]  # the cheat's slash (to the treasury)
    # Only the cheat leaves this job; the honest rank 0 is neither disputed nor excluded.
    assert mallory.pk in job.excluded_nodes and honest.pk not in job.excluded_nodes
    assert "attribution: At step 5, rank 1" in " ".join(report.reasons)
    assert f"node {mallory.pk}'s work" in job.events.get(reason="verification_failed").message


def test_a_corrupting_rank_1_that_forges_its_copy_gets_nobody_slashed(client, verify_worker):
    # Rank 1's node says, in its own copy, that rank 0 committed something else: one node's
    # word about another. The copies disagree, so nobody is named (never the honest rank 0).
    honest, mallory = cpu_node(), cpu_node()
    job, parts = running_job([honest, mallory])
    witness = replay.Witness(0)
    end = trained_segment(client, parts, world=2, corrupt_rank=1, witness=witness)
    assert Agent(client, parts[0]).put("commitments/10/", commitments_body(witness)).status_code == 201
    rows = [json.loads(line) for line in commitments_body(witness).decode().splitlines()]
    for row in rows:
        row["grad"][0] = [-v for v in row["grad"][0]]  # rank 0 "negated" its gradient
        row["grad"][1] = [-v for v in row["grad"][1]]  # and rank 1 sent its share
    forged = "".join(json.dumps(row) + "\n" for row in rows).encode()
    assert Agent(client, parts[1]).put("commitments/10/", forged).status_code == 201
    Agent(client, parts[1]).finish(step=10)
    Agent(client, parts[0]).finish(step=10, artifact=saved({"model": end}), metric="accuracy", value=None)

    job = _left_verifying(job)
    report = VerificationReport.objects.get(job=job)
    assert report.status == "failed" and [s["passed"] for s in report.segments] == [True, False]
    dispute = Dispute.objects.get(job=job)
    assert (dispute.reason, dispute.attributed) == ("replay_mismatch", False)
    assert "attribution: nobody named (the nodes' copies of the commitments disagree at step 5" in (
        " ".join(report.reasons))
    # Nobody is slashed automatically: no slash queued, and the service refuses one.
    assert queued(verify_worker, "chain") == []
    assert staking.dispute_slash(dispute_id=dispute.pk).status == "open"
    assert job.events.filter(reason="dispute_unattributed").exists()
    # Neither node runs this job again (its author is unknown), and the job goes on.
    assert job.status == S.INTERRUPTED and {honest.pk, mallory.pk} <= set(job.excluded_nodes)
    assert "cannot be pinned on one of them" in job.events.get(reason="verification_failed").message
