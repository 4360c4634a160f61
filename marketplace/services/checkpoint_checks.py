"""Checkpoints are also checked one by one when they are uploaded (`checkpoint_validate`, on
the same queue, since that is where the platform may import torch): a checkpoint that does
not load with weights_only=True, whose tensors' names and shapes are not the job's model's,
whose optimizer state does not fit it, or whose step does not fit the progress reported is
rejected with the reason. Only valid checkpoints are resumed from and paid up to.

The replay of a broken or paused attempt's resume point (`checkpoint_replay`, asked for by
services/replays.py) decides whether that checkpoint is trusted: resumed from and paid up to.
"""

from __future__ import annotations

import logging
import math
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import job_states, task_names
from ..models import Assignment, Checkpoint, Dispute, Job, MetricPoint
from ..selectors.checkpoints import checkpoints_resumable
from . import enqueue
from .attribution import Finding, attribute, dispute_open, whose_work
from .verification import (
    RUN_LIMIT,
    VALIDATE_TASK,
    CheckAttempt,
    CheckpointProblem,
    attempt_commitments,
    check_inputs,
    counted_checkpoints,
)

log = logging.getLogger(__name__)
S = Job.Status


# --- the resume point of a broken or paused attempt ------------------------------------------
def _replay_plan(ckpt: Checkpoint, parts: list[Assignment], rng: secrets.SystemRandom | None
                 ) -> tuple[dict | None, str]:
    """What to replay before the work up to `ckpt` is trusted: always the segment that ends
    at it, and random earlier ones of its assignment within VERIFY_REPLAY_SHARE of the work.
    None (and why) when it cannot be replayed."""
    a = ckpt.assignment
    own = list(a.checkpoints.filter(step__lte=ckpt.step, status__in=(Checkpoint.Status.VALID,
                                                                    Checkpoint.Status.VERIFIED))
               .order_by("step"))
    counted, _ = counted_checkpoints(own, finished_at=a.finished_at)
    if ckpt.pk not in {c.pk for c in counted}:
        return None, "it was not committed before the next checkpoint or the end of its run"
    start = a.resume_step or 0
    paths: dict[int, str | None] = {c.step: c.file.path for c in counted if c.step > start}
    if start == 0:
        paths[0] = None  # the initial state, made from the job's seed
    else:
        resumed = (checkpoints_resumable(Checkpoint.objects.filter(job_id=a.job_id, step=start))
                   .exclude(assignment=a).first())
        if resumed is not None:
            paths[start] = resumed.file.path
    boundaries = sorted(paths)
    if len(boundaries) < 2:
        return None, f"there is no earlier checkpoint to replay the steps up to {ckpt.step} from"
    last = (boundaries[-2], boundaries[-1])
    budget = math.floor(settings.VERIFY_REPLAY_SHARE * (ckpt.step - start)) - (last[1] - last[0])
    earlier = list(zip(boundaries[:-2], boundaries[1:-1], strict=True))
    (rng or secrets.SystemRandom()).shuffle(earlier)
    segments = [last]
    for a_step, b_step in earlier:
        if b_step - a_step <= budget:
            segments.append((a_step, b_step))
            budget -= b_step - a_step
    segments.sort()
    needed = {step for seg in segments for step in seg}
    return {
        "template": ckpt.job.template, "params": ckpt.job.params, "world_size": sum(p.gpus for p in parts),
        "checkpoints": {step: paths[step] for step in sorted(needed)}, "segments": segments,
        "threshold": settings.VERIFY_REPLAY_THRESHOLD, "check_model": False,
        "commitments": attempt_commitments(ckpt.job, parts, segments),
    }, ""


def checkpoint_replay(*, checkpoint_id: int, check: CheckAttempt,
                      rng: secrets.SystemRandom | None = None) -> str:
    """Replay the work up to the checkpoint a broken or paused attempt would be resumed from
    and paid up to (replays.replay_request asks for it). Passed: it is VERIFIED. Failed: the
    attempt's work is disputed as a failed verification is (not charged; slashed only when
    it ran on one node), its checkpoints are rejected and the job resumes from an earlier
    trusted one. Returns the checkpoint's status; idempotent (a redelivered task finds it
    decided)."""
    ckpt = (Checkpoint.objects.select_related("job", "job__dataset", "assignment")
            .filter(pk=checkpoint_id).first())
    if ckpt is None or ckpt.status != Checkpoint.Status.VALID:
        return ckpt.status if ckpt else "missing"
    parts = list(Assignment.objects.select_related("node")
                 .filter(job_id=ckpt.job_id, attempt=ckpt.assignment.attempt).order_by("node_rank"))
    plan, why_not = _replay_plan(ckpt, parts, rng)
    findings: list[Finding] = []
    result: dict[str, Any] = {"segments": [], "replay_steps": 0}
    if plan is not None:
        with check_inputs(ckpt.job) as (dataset, task):
            result = check({**plan, **task}, dataset)  # torch: outside any transaction
        findings = [Finding(Dispute.Reason(r), d) for r, d in result["findings"]]
    record = {"segments": result["segments"], "replay_steps": result["replay_steps"],
              "train_steps": max(0, ckpt.step - (ckpt.assignment.resume_step or 0)),
              "checked_at": timezone.now().isoformat(), "attribution": result.get("attribution")}
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=ckpt.job_id)
        C = Checkpoint.Status
        if plan is None:
            done = Checkpoint.objects.filter(pk=ckpt.pk, status=C.VALID).update(
                status=C.REJECTED, rejected_reason=f"it cannot be replayed: {why_not}"[:500], replay=record)
            if done:
                job_states.note(job_id=job.pk, reason="checkpoint_rejected",
                                data={"checkpoint": ckpt.pk, "step": ckpt.step},
                                message=f"The checkpoint at step {ckpt.step} cannot be replayed ({why_not}): "
                                        "work is neither resumed from it nor paid up to it.")
        elif findings:
            done = Checkpoint.objects.filter(pk=ckpt.pk, status=C.VALID).update(
                status=C.REJECTED, rejected_reason=findings[0].detail[:500], replay=record)
            if done:
                Checkpoint.objects.filter(assignment=ckpt.assignment, status=C.VALID).update(
                    status=C.REJECTED, rejected_reason=f"its attempt's work up to step {ckpt.step} "
                                                       "does not replay")
                named, at_fault = attribute(parts, findings, result.get("attribution"),
                                            consumer_code=ckpt.job.bundle_id is not None)
                dispute = dispute_open(job, parts, named, at_fault, findings, report=None)
                whose = whose_work(parts, at_fault)
                job_states.note(job_id=job.pk, reason="replay_failed",
                                data={"checkpoint": ckpt.pk, "step": ckpt.step, "dispute": dispute.pk},
                                message=f"The work up to step {ckpt.step} does not replay, for {whose}: "
                                        f"{named.detail} That attempt is not charged; the job resumes "
                                        "from an earlier checked checkpoint.")
        else:
            done = Checkpoint.objects.filter(pk=ckpt.pk, status=C.VALID).update(
                status=C.VERIFIED, replay=record)
            if done:
                worst = max((seg["rel_l2"] or 0 for seg in result["segments"]), default=0)
                job_states.note(job_id=job.pk, reason="checkpoint_replayed",
                                data={"checkpoint": ckpt.pk, "step": ckpt.step},
                                message=f"The work up to step {ckpt.step} replays ({len(result['segments'])} "
                                        f"segment(s), {result['replay_steps']} steps, largest distance "
                                        f"{worst:.1e}): resumed from and paid up to it.")
    if done and Job.objects.filter(pk=ckpt.job_id, status=Job.Status.MATCHING).exists():
        enqueue.match_job(ckpt.job_id)  # placement waited for this check
    return Checkpoint.objects.filter(pk=ckpt.pk).values_list("status", flat=True).get()


def checkpoint_replay_error(*, checkpoint_id: int, message: str) -> None:
    """The replay could not finish after its retries: the checkpoint stays untrusted (neither
    resumed from nor paid up to: the safe side; placement stops waiting for it after
    CHECKPOINT_CHECK_WAIT_S), and the timeline says so for staff."""
    ckpt = Checkpoint.objects.filter(pk=checkpoint_id, status=Checkpoint.Status.VALID).first()
    if ckpt is None or ckpt.replay.get("error"):
        return
    Checkpoint.objects.filter(pk=ckpt.pk).update(replay={"error": message[:500]})
    job_states.note(job_id=ckpt.job_id, reason="checkpoint_replay_error",
                    data={"checkpoint": ckpt.pk, "step": ckpt.step},
                    message=f"The replay of the work up to step {ckpt.step} could not finish: "
                            f"{message[:300]}")


# --- checkpoints, one by one, when they are uploaded ------------------------------------------
# Waiting for the progress that names a checkpoint's step: the agent sends it over its
# socket just before the upload (plain HTTP), so it is normally there first.
PROGRESS_WAIT_S = 30


def checkpoint_validate_enqueue(checkpoint: Checkpoint) -> None:
    enqueue.enqueue(VALIDATE_TASK, checkpoint.pk)


def _checkpoint_problem(ckpt: Checkpoint, problem_of: CheckpointProblem) -> str | None:
    """Why a checkpoint cannot be resumed from, or None (workers.verify.checkpoint_problem)."""
    job = ckpt.job
    world = sum(job.assignments.filter(attempt=ckpt.assignment.attempt).values_list("gpus", flat=True))
    with check_inputs(job) as (dataset, task):
        return problem_of(ckpt.file.path, step=ckpt.step, template=job.template, params=job.params,
                          dataset=dataset, world_size=world, bundle=task.get("bundle"))


def _progress_problem(ckpt: Checkpoint) -> str | None:
    """A checkpoint's step must be one the assignment trained: after where it resumed, and
    not beyond the progress it reported. None when it fits, "wait" while the progress may
    still be on its way."""
    a = ckpt.assignment
    if ckpt.step <= (a.resume_step or 0):
        return f"step {ckpt.step} is not after step {a.resume_step or 0}, where this placement started"
    reported = max(MetricPoint.objects.filter(assignment=a).order_by("-step")
                   .values_list("step", flat=True).first() or 0, a.last_step or 0)
    if ckpt.step <= reported:
        return None
    if timezone.now() - ckpt.created_at < timedelta(seconds=PROGRESS_WAIT_S):
        return "wait"
    return f"step {ckpt.step} is ahead of the progress this node reported (step {reported})"


def checkpoint_validate(*, checkpoint_id: int, problem_of: CheckpointProblem) -> str:
    """Check one uploaded checkpoint once with `problem_of` (the torch half); returns its
    status ("pending" while the progress that names its step may still arrive: call again
    later). A rejected checkpoint is never resumed from nor paid up to; the timeline says why."""
    ckpt = (Checkpoint.objects.select_related("job", "job__dataset", "assignment")
            .filter(pk=checkpoint_id).first())
    if ckpt is None or ckpt.status != Checkpoint.Status.PENDING:
        return ckpt.status if ckpt else "missing"
    problem = _progress_problem(ckpt)
    if problem == "wait":
        return Checkpoint.Status.PENDING
    problem = problem or _checkpoint_problem(ckpt, problem_of)  # torch: outside any transaction
    status = Checkpoint.Status.REJECTED if problem else Checkpoint.Status.VALID
    with transaction.atomic():
        done = Checkpoint.objects.filter(pk=ckpt.pk, status=Checkpoint.Status.PENDING).update(
            status=status, rejected_reason=(problem or "")[:500], validated_at=timezone.now())
        if done and problem:
            # Its author uploaded what no node can resume from: it is not placed on this job
            # again (nor paid for it, metering.paid_checkpoint_at); a node that later fails
            # to load a checkpoint is never the one blamed (execution._resume_failed).
            job = Job.objects.select_for_update().get(pk=ckpt.job_id)
            if ckpt.assignment.node_id not in job.excluded_nodes:
                job.excluded_nodes = [*job.excluded_nodes, ckpt.assignment.node_id]
                job.save(update_fields=["excluded_nodes", "updated_at"])
            job_states.note(job_id=ckpt.job_id, reason="checkpoint_rejected",
                            data={"checkpoint": ckpt.pk, "step": ckpt.step, "node": ckpt.assignment.node_id},
                            message=f"The checkpoint at step {ckpt.step} from node {ckpt.assignment.node_id} "
                                    f"was rejected: {problem}. Work is neither resumed from it nor paid "
                                    "up to it.")
    if done and Job.objects.filter(pk=ckpt.job_id, status=Job.Status.MATCHING).exists():
        enqueue.match_job(ckpt.job_id)  # placement waited for this check (jobs_awaiting_checkpoint_check)
    return Checkpoint.objects.filter(pk=ckpt.pk).values_list("status", flat=True).get()


def checkpoints_stale(*, older_than_s: float = 120, give_up_after_s: float = 3600) -> int:
    """Queue again the checks of checkpoints still pending (a lost task): periodic. One
    whose check keeps failing on our side is left pending after `give_up_after_s` (neither
    resumed from nor paid up to: the safe side), not retried for ever."""
    now = timezone.now()
    stale = list(Checkpoint.objects.filter(status=Checkpoint.Status.PENDING,
                                           created_at__lt=now - timedelta(seconds=older_than_s),
                                           created_at__gt=now - timedelta(seconds=give_up_after_s))
                 .values_list("pk", flat=True)[:200])
    for pk in stale:
        enqueue.enqueue(VALIDATE_TASK, pk)
    # Replays asked for and never answered (a lost task; one that ran raised or decided).
    lost = list(Checkpoint.objects.filter(status=Checkpoint.Status.VALID, replay={},
                                          replay_requested_at__lt=now - RUN_LIMIT,
                                          replay_requested_at__gt=now - RUN_LIMIT - timedelta(
                                              seconds=give_up_after_s))
                .values_list("pk", flat=True)[:200])
    for pk in lost:
        enqueue.enqueue(task_names.CHECKPOINT_REPLAY, pk)
    return len(stale) + len(lost)
