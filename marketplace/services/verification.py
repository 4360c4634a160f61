"""Verification of training work: a job is completed only after its work is checked.

When an attempt's training finishes the job goes to `verifying` and a task on the `verify`
queue runs `verification_run`:
- checkpoint commitments: a checkpoint counts only if the provider committed its SHA-256
  (the agent's `checkpoint` message) before the next checkpoint of that assignment was
  uploaded, or before the assignment finished for the last one, give or take
  VERIFY_COMMIT_GRACE_S: the commitment travels on the agent socket and is applied by the
  ingest a moment after the agent sent it, while the next upload is plain HTTP (a file's
  content is fixed at its upload anyway: a step cannot be uploaded twice). A late
  checkpoint is left out of the spot checks (an unverifiable boundary, listed in the
  report) rather than disputed; an attempt left with nothing to replay for want of
  commitments is disputed (checkpoint_uncommitted), or a cheat could dodge the replay;
- step-replay spot checks: segments between consecutive counted checkpoints, drawn with
  SystemRandom only now, after every checkpoint was committed, within VERIFY_REPLAY_SHARE
  of the attempt's steps (the runtime checkpoints often enough for VERIFY_SEGMENTS of
  them to fit: spec.verify in the assignment), replayed by workers/training/replay.py and
  compared by relative L2 distance against VERIFY_REPLAY_THRESHOLD;
- the final model: it must be the last committed checkpoint's model, and the platform's
  own held-out evaluation must not be worse than the reported metric by more than
  VERIFY_METRIC_TOLERANCE.

Pass → completed. Fail → a Dispute against node rank 0's assignment (it committed the
checkpoints and reported the metric), the slash task enqueued on the chain queue, the
node excluded, the attempt's work neither charged nor paid (payments.job_statement), and
the job re-placed from the last checkpoint before that attempt (or from scratch).
Idempotent: a redelivered task finds the report final and does nothing.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .. import job_states
from ..errors import NotFound
from ..models import Assignment, Checkpoint, Job
from ..trust_models import Dispute, VerificationReport
from . import enqueue, placement

log = logging.getLogger(__name__)

S = Job.Status
R = VerificationReport.Status
FINAL = (R.PASSED, R.FAILED, R.ERROR)
# As long as a verify task may run (workers/tasks_verify.py's time limit); a check started
# longer ago than this died with its worker.
RUN_LIMIT = timedelta(seconds=1800)
SLASH_TASK = "workers.tasks_chain.dispute_slash"
VERIFY_TASK = "workers.tasks_verify.verify_attempt"


def verify_spec() -> dict:
    """What the runtime is told so that its checkpoints suit the spot checks."""
    return {"replay_share": settings.VERIFY_REPLAY_SHARE, "segments": settings.VERIFY_SEGMENTS}


# --- starting ----------------------------------------------------------------------
def verification_start(*, job: Job, attempt: int) -> VerificationReport:
    """The attempt's training finished: the job goes to verifying and the check is queued
    (once: a second call finds the report)."""
    report, created = VerificationReport.objects.get_or_create(
        job=job, attempt=attempt, defaults={"threshold": settings.VERIFY_REPLAY_THRESHOLD})
    if created:
        enqueue.enqueue(VERIFY_TASK, report.pk)
    return report


# --- choosing what to check --------------------------------------------------------
def counted_checkpoints(checkpoints: list[Checkpoint], *,
                        finished_at=None) -> tuple[list[Checkpoint], list[str]]:
    """The checkpoints of one assignment (by step) that count, and a note for each that
    does not: committed before the next one was uploaded (the last: before it finished)."""
    counted, notes = [], []
    for i, ckpt in enumerate(checkpoints):
        deadline = checkpoints[i + 1].created_at if i + 1 < len(checkpoints) else finished_at
        grace = timedelta(seconds=settings.VERIFY_COMMIT_GRACE_S)
        if ckpt.committed_at is None:
            notes.append(f"checkpoint at step {ckpt.step} was never committed")
        elif deadline is not None and ckpt.committed_at > deadline + grace:
            notes.append(f"checkpoint at step {ckpt.step} was committed after the next one was written")
        else:
            counted.append(ckpt)
    return counted, notes


def choose_segments(boundaries: list[int], *, train_steps: int, share: float,
                    rng: secrets.SystemRandom | None = None) -> list[tuple[int, int]]:
    """Random segments between consecutive boundary steps whose replay stays within `share`
    of `train_steps`. When none fits (a short resumed attempt), the shortest one is taken,
    so that no attempt goes unchecked; the report shows the real share."""
    candidates = [(a, b) for a, b in zip(boundaries, boundaries[1:], strict=False) if b > a]
    if not candidates:
        return []
    rng = rng or secrets.SystemRandom()
    rng.shuffle(candidates)
    budget, chosen = math.floor(share * train_steps), []
    for a, b in candidates:
        if b - a <= budget:
            chosen.append((a, b))
            budget -= b - a
    return sorted(chosen) or [min(candidates, key=lambda s: s[1] - s[0])]


# --- checking -----------------------------------------------------------------------
@dataclass
class Finding:
    reason: str  # a Dispute.Reason
    detail: str


@dataclass
class Outcome:
    segments: list[dict] = field(default_factory=list)
    replay_steps: int = 0
    train_steps: int = 0
    metric_measured: float | None = None
    notes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def _dataset(job: Job) -> dict:
    if job.dataset_ref.startswith("sample:"):
        return {"kind": "sample", "name": job.dataset_ref.removeprefix("sample:")}
    if job.dataset is None:
        raise NotFound("The job's dataset is gone.")
    return {"kind": "csv", "path": job.dataset.file.path}


def metric_inflated(metric: str, reported: float, measured: float, tolerance: float) -> bool:
    better_by = (measured - reported) if metric == "mape" else (reported - measured)
    return better_by > tolerance * max(abs(measured), 1e-9)


def _check(job: Job, attempt: int, rng: secrets.SystemRandom | None = None) -> Outcome:
    from workers.training import checkpoint as ckpt_io  # torch: only in the verify worker
    from workers.training import replay

    from .execution import is_diloco

    out = Outcome()
    parts = list(job.assignments.filter(attempt=attempt).order_by("node_rank"))
    rank0 = next(a for a in parts if a.node_rank == 0)
    start = rank0.resume_step or 0
    out.train_steps = max(0, job.current_step - start)
    own = list(rank0.checkpoints.order_by("step"))
    counted, out.notes = counted_checkpoints(own, finished_at=rank0.finished_at)
    resume = (job.checkpoints.filter(step=start, committed_at__isnull=False).exclude(assignment=rank0)
              .first() if rank0.resume_step else None)
    by_step = {c.step: c for c in ([resume] if resume else []) + counted}

    runner = replay.Replayer(replay.Job(template=job.template, params=job.params, dataset=_dataset(job),
                                        world_size=sum(a.gpus for a in parts)))
    threshold = settings.VERIFY_REPLAY_THRESHOLD
    if is_diloco(job):
        out.notes.append("DiLoCo across nodes: step replay is not checked (each node trains its own "
                         "group and the outer steps mix every node's work); the final model and "
                         "its held-out metric are")
    else:
        segments = choose_segments(sorted(by_step), train_steps=out.train_steps,
                                   share=settings.VERIFY_REPLAY_SHARE, rng=rng)
        # The runtime checkpoints at the platform's cadence and at the last step, so every
        # honest attempt that trained leaves segments to replay: without them the work is
        # unverifiable, and unverifiable work is not paid for.
        if not segments and out.train_steps > 0:
            missing = (f"{len(own) - len(counted)} of {len(own)} checkpoints were not committed in time"
                       if len(own) > len(counted) else
                       f"{len(own) or 'no'} checkpoint{'' if len(own) == 1 else 's'} uploaded")
            out.findings.append(Finding(Dispute.Reason.CHECKPOINT_UNCOMMITTED, (
                f"{missing} for {out.train_steps} steps of training, so no segment of this work "
                "can be replayed.")))
        elif not segments:
            out.notes.append("no two counted checkpoints to replay between")
        for a, b in segments:
            try:
                result = replay.check_segment(runner, by_step[a].file.path, by_step[b].file.path,
                                              threshold=threshold)
            except replay.SegmentError as exc:
                out.segments.append({"from_step": a, "to_step": b, "rel_l2": None, "passed": False,
                                     "error": str(exc)[:300]})
                out.findings.append(Finding(Dispute.Reason.REPLAY_MISMATCH, f"Steps {a}..{b} cannot "
                                            f"be replayed from the committed checkpoints: {exc}"))
                continue
            out.segments.append(result.as_dict())
            out.replay_steps += b - a
            if not result.passed:
                out.findings.append(Finding(Dispute.Reason.REPLAY_MISMATCH, (
                    f"Replaying steps {a}..{b} gives parameters {result.rel_l2:.2e} (relative L2) "
                    f"from the committed checkpoint at step {b}; the threshold is {threshold:.0e}.")))

    # The final model: the last committed checkpoint's, and as good as reported.
    artifact = ckpt_io.load(job.artifact.path)
    final = by_step.get(job.current_step)
    if final is None and out.train_steps > 0:
        out.findings.append(Finding(Dispute.Reason.CHECKPOINT_UNCOMMITTED, (
            f"No checkpoint was committed at the final step {job.current_step}, so the uploaded "
            "model cannot be tied to the checked work.")))
    elif final is None:
        out.notes.append(f"no counted checkpoint at the final step {job.current_step}")
    elif replay.rel_l2(artifact["model"], ckpt_io.load(final.file.path)["model"]) != 0:
        out.findings.append(Finding(Dispute.Reason.ARTIFACT_MISMATCH,
                                    f"The model uploaded differs from the checkpoint committed at "
                                    f"step {final.step}."))
    metric, out.metric_measured = runner.evaluate(artifact["model"])
    if job.metric_value is not None and metric_inflated(metric, job.metric_value, out.metric_measured,
                                                  settings.VERIFY_METRIC_TOLERANCE):
        out.findings.append(Finding(Dispute.Reason.METRIC_INFLATED, (
            f"Reported held-out {metric} {job.metric_value:.6g}; the platform measures "
            f"{out.metric_measured:.6g} on the same split with the same model.")))
    return out


# --- running --------------------------------------------------------------------------
def verification_run(*, report_id: int, rng: secrets.SystemRandom | None = None) -> str:
    """Check one attempt and act on the outcome, exactly once. Returns the report's status."""
    with transaction.atomic():
        report = VerificationReport.objects.select_for_update().filter(pk=report_id).first()
        if report is None or report.status in FINAL:
            return report.status if report else "missing"
        report.status, report.started_at = R.RUNNING, timezone.now()
        report.save(update_fields=["status", "started_at"])
    job = Job.objects.select_related("dataset").get(pk=report.job_id)
    outcome = _check(job, report.attempt, rng)  # minutes of torch: outside any transaction

    with transaction.atomic():
        report = VerificationReport.objects.select_for_update().get(pk=report_id)
        if report.status in FINAL:  # a redelivered twin finished first
            return report.status
        job = Job.objects.select_for_update().get(pk=report.job_id)
        report.status = R.FAILED if outcome.findings else R.PASSED
        report.segments = outcome.segments
        report.metric_name, report.metric_reported = job.metric_name, job.metric_value
        report.metric_measured = outcome.metric_measured
        report.replay_steps, report.train_steps = outcome.replay_steps, outcome.train_steps
        report.reasons = [f.detail for f in outcome.findings] + [f"note: {n}" for n in outcome.notes]
        report.finished_at = timezone.now()
        report.save()
        if outcome.findings:
            _failed(job, report, outcome.findings)
        elif job.status == S.VERIFYING and job.attempt == report.attempt:
            _passed(job, report)
    return report.status


def verification_error(*, report_id: int, message: str) -> None:
    """The check itself could not run (after retries): the job stays verifying, the report
    and the timeline say why, and an operator may queue it again (verification_retry)."""
    with transaction.atomic():
        report = VerificationReport.objects.select_for_update().get(pk=report_id)
        if report.status in FINAL:
            return
        report.status, report.finished_at = R.ERROR, timezone.now()
        report.reasons = [f"error: {message[:500]}"]
        report.save(update_fields=["status", "finished_at", "reasons"])
        job_states.note(job_id=report.job_id, reason="verification_error",
                        message=f"The work could not be verified: {message[:300]}")


def verifications_stale(*, queued_for_s: float = 300) -> int:
    """Queue again the checks whose message was lost (a broker or worker killed between the
    commit and the task): pending for `queued_for_s`, or running past the task's time limit.
    A twin that runs beside a slow original does the work twice but acts once (the report's
    status is checked again under its lock before anything is decided)."""
    now = timezone.now()
    stale = list(VerificationReport.objects.filter(
        Q(status=R.PENDING, created_at__lt=now - timedelta(seconds=queued_for_s))
        | Q(status=R.RUNNING, started_at__lt=now - RUN_LIMIT)).values_list("pk", flat=True)[:100])
    for report_id in stale:
        enqueue.enqueue(VERIFY_TASK, report_id)
    return len(stale)


def verification_retry(*, report_id: int) -> None:
    """Queue a check that ended in an error again."""
    with transaction.atomic():
        if VerificationReport.objects.filter(pk=report_id, status=R.ERROR).update(status=R.PENDING):
            enqueue.enqueue(VERIFY_TASK, report_id)


def _passed(job: Job, report: VerificationReport) -> None:
    worst = max((s["rel_l2"] or 0 for s in report.segments), default=None)
    share = report.compute_share
    replayed = (f"{len(report.segments)} segment(s), {report.replay_steps} of {report.train_steps} steps "
                f"replayed ({share:.1%}), largest distance {worst:.1e}" if report.segments
                else "no step replay")
    job_states.transition(job_id=job.pk, to=S.COMPLETED, reason="verification_passed", expect={S.VERIFYING},
                          message=f"Verified: {replayed}; held-out {report.metric_name} "
                                  f"{report.metric_measured:.4g} as reported.",
                          data={"verification": report.pk})
    Job.objects.filter(pk=job.pk).update(finished_at=timezone.now())


def _failed(job: Job, report: VerificationReport, findings: list[Finding]) -> None:
    rank0 = Assignment.objects.select_related("node").get(job=job, attempt=report.attempt, node_rank=0)
    # One dispute (and so at most one slash) per failed attempt, named by its first finding;
    # the others are its evidence. Two findings are one piece of dishonest work, not two.
    dispute, created = Dispute.objects.get_or_create(
        assignment=rank0, reason=findings[0].reason,
        defaults={"job": job, "provider_id": rank0.node.provider_id, "verification": report,
                  "detail": " ".join(f.detail for f in findings)[:2000]})
    if created:
        enqueue.enqueue(SLASH_TASK, dispute.pk)
    if rank0.node_id not in job.excluded_nodes:
        job.excluded_nodes = [*job.excluded_nodes, rank0.node_id]
        job.save(update_fields=["excluded_nodes", "updated_at"])
    if job.status != S.VERIFYING or job.attempt != report.attempt:
        return
    why = "; ".join(sorted({f.reason for f in findings}))
    message = (f"Verification failed ({why}) for node {rank0.node_id}'s work: {findings[0].detail} "
               "That work is not charged; the job runs again elsewhere.")
    if job.attempt >= placement.max_attempts():
        job_states.transition(job_id=job.pk, to=S.FAILED, reason="verification_failed",
                              message=message + f" Gave up after {job.attempt} placements.",
                              data={"verification": report.pk})
        return
    job_states.transition(job_id=job.pk, to=S.INTERRUPTED, reason="verification_failed",
                          message=message, data={"verification": report.pk})
    enqueue.match_job(job.pk)
