"""The verifier's pure rules: which checkpoints count, and which segments are replayed."""

import random
import secrets
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.test import override_settings

from marketplace.models import Dispute, Job
from marketplace.services import verification
from marketplace.services.attribution import Finding, attribute
from marketplace.services.verification import (
    choose_segments,
    counted_checkpoints,
    metric_inflated,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ckpt(step: int, uploaded_s: float, committed_s: float | None):
    return SimpleNamespace(step=step, created_at=T0 + timedelta(seconds=uploaded_s),
                           committed_at=None if committed_s is None else T0 + timedelta(seconds=committed_s))


@override_settings(VERIFY_COMMIT_GRACE_S=2)
def test_a_checkpoint_counts_only_if_committed_before_the_next_one_was_uploaded():
    checkpoints = [ckpt(10, 0, 1), ckpt(20, 10, 11.5),  # committed within the grace of the next upload
                   ckpt(30, 11, 40),                     # committed long after step 40 existed
                   ckpt(40, 20, None),                   # never committed
                   ckpt(50, 30, 31)]
    counted, notes = counted_checkpoints(checkpoints, finished_at=T0 + timedelta(seconds=32))
    assert [c.step for c in counted] == [10, 20, 50]
    assert notes == ["checkpoint at step 30 was committed after the next one was written",
                     "checkpoint at step 40 was never committed"]
    late_last, notes = counted_checkpoints([ckpt(10, 0, 1), ckpt(20, 5, 60)],
                                           finished_at=T0 + timedelta(seconds=6))
    assert [c.step for c in late_last] == [10] and "step 20" in notes[0]


@pytest.mark.parametrize("seed", range(20))
def test_segments_are_consecutive_boundaries_within_the_replay_budget(seed):
    boundaries = list(range(0, 225, 11)) + [224]
    segments = choose_segments(boundaries, train_steps=224, share=0.1, rng=random.Random(seed))
    assert segments and all((a, b) in zip(boundaries, boundaries[1:], strict=False) for a, b in segments)
    assert sum(b - a for a, b in segments) <= 22


def test_without_a_segment_in_budget_the_shortest_is_replayed():
    assert choose_segments([100, 150, 160], train_steps=60, share=0.1) == [(150, 160)]
    assert choose_segments([100], train_steps=60, share=0.1) == []


def test_only_a_better_metric_than_measured_is_inflated():
    higher = {"lower_is_better": False}
    assert metric_inflated(0.97, 0.95, 1e-3, **higher)
    assert not metric_inflated(0.95, 0.97, 1e-3, **higher)  # modest is not cheating
    assert not metric_inflated(0.9500001, 0.95, 1e-3, **higher)
    # A loss, an error: smaller is better, so reporting less than measured is inflating.
    assert metric_inflated(9.0, 10.0, 1e-3, lower_is_better=True)
    assert not metric_inflated(11.0, 10.0, 1e-3, lower_is_better=True)


def test_a_tasks_metric_knows_its_sense_of_better():
    # The runtime's rule, which the verifier reports with each measurement: a custom task's
    # default metric is "loss" (the forecaster example reports mae): lower is better for both.
    from workers.training import task as tasks

    def sense(metric, declared=None):
        task_class = type("T", (tasks.Task,), {"metric": metric, "lower_is_better": declared})
        return tasks.metric_lower_is_better(task_class.__new__(task_class))

    assert sense("loss") and sense("mae") and sense("rmse") and sense("mape") and sense("val_loss")
    assert not sense("accuracy") and not sense("f1") and not sense("r2")
    assert sense("score", declared=True) and not sense("loss", declared=False)


def test_checks_whose_task_was_lost_are_queued_again(healthcare, monkeypatch):
    from django.utils import timezone

    from marketplace.models import VerificationReport
    from marketplace.services import enqueue, verification

    from .factories import JobFactory

    sent = []
    monkeypatch.setattr(enqueue, "enqueue", lambda task, *args, **kw: sent.append((task, args)))
    job = JobFactory(owner=healthcare, status="verifying")
    old = timezone.now() - timedelta(seconds=400)
    lost = VerificationReport.objects.create(job=job, attempt=1, threshold=1e-4)
    fresh = VerificationReport.objects.create(job=job, attempt=2, threshold=1e-4)
    dead = VerificationReport.objects.create(job=job, attempt=3, threshold=1e-4, status="running",
                                             started_at=timezone.now() - timedelta(hours=1))
    busy = VerificationReport.objects.create(job=job, attempt=4, threshold=1e-4, status="running",
                                             started_at=timezone.now())
    done = VerificationReport.objects.create(job=job, attempt=5, threshold=1e-4, status="passed")
    VerificationReport.objects.filter(pk__in=[lost.pk, dead.pk, busy.pk, done.pk]).update(created_at=old)

    assert verification.verifications_stale() == 2
    assert sorted(args[0] for _, args in sent) == sorted([lost.pk, dead.pk])
    assert {task for task, _ in sent} == {verification.VERIFY_TASK}
    assert fresh.pk not in [args[0] for _, args in sent]


R = Dispute.Reason


@pytest.mark.parametrize("reason", [R.REPLAY_MISMATCH, R.METRIC_INFLATED, R.ARTIFACT_MISMATCH])
def test_what_a_consumers_own_code_computed_is_pinned_on_nobody(reason):
    # A bundle's replay and evaluation run the consumer's code: a task that misbehaves on the
    # verifier alone must not get an honest provider slashed. The same findings of a template
    # job are the node's.
    one_node = [SimpleNamespace(node_rank=0)]
    findings = [Finding(reason, "the replay differs")]
    assert attribute(one_node, findings) == (findings[0], one_node)
    assert attribute(one_node, findings, consumer_code=True) == (findings[0], [])


def test_a_missing_commitment_is_the_nodes_own_whatever_code_ran():
    one_node = [SimpleNamespace(node_rank=0)]
    findings = [Finding(R.REPLAY_MISMATCH, "differs"), Finding(R.CHECKPOINT_UNCOMMITTED, "late")]
    assert attribute(one_node, findings, consumer_code=True) == (findings[1], one_node)


def _fresh_attempt(checkpoint_steps: list[int]) -> Job:
    from django.utils import timezone

    from marketplace.models import Assignment, Checkpoint

    from .verify_support import cpu_node, running_job

    job, (rank0,) = running_job([cpu_node()], current_step=checkpoint_steps[-1])
    for step in checkpoint_steps:
        Checkpoint.objects.create(job=job, assignment=rank0, step=step, sha256="0" * 64, size_bytes=1,
                                  file=f"checkpoints/job-{job.pk}-{step}.pt", committed_at=timezone.now())
    Assignment.objects.filter(pk=rank0.pk).update(finished_at=timezone.now())
    return job


def test_the_stretch_before_the_first_checkpoint_is_drawn_from_the_initial_state(db, settings):
    # Before: segments ran only between uploaded checkpoints, so the steps up to the first
    # one were never replayed (a provider could skip them). A fresh attempt's step 0 is a
    # state the verifier builds itself (seed, or the job's input weights): no file needed.
    settings.VERIFY_REPLAY_SHARE = 1.0  # every segment fits: the draw takes them all
    job = _fresh_attempt([10, 20])
    plan = verification._plan(job, 1, secrets.SystemRandom(), verification.Outcome())
    assert plan["segments"] == [(0, 10), (10, 20)]
    assert plan["checkpoints"][0] is None and plan["checkpoints"][20].endswith("-20.pt")


def test_one_final_checkpoint_is_still_a_replayable_attempt(db, settings):
    out = verification.Outcome()
    plan = verification._plan(_fresh_attempt([12]), 1, secrets.SystemRandom(), out)
    assert plan["segments"] == [(0, 12)] and not out.findings
