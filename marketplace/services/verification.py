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
- step-replay spot checks: segments between consecutive counted checkpoints (a fresh
  attempt's first one from step 0: the state the verifier builds from the job's seed or its
  input weights, so no stretch goes unchecked), drawn with SystemRandom only now, after
  every checkpoint was committed, within VERIFY_REPLAY_SHARE of the attempt's steps (the
  runtime checkpoints often enough for VERIFY_SEGMENTS of them to fit: spec.verify in the
  assignment), replayed by workers/training/replay.py and compared by relative L2 distance
  against VERIFY_REPLAY_THRESHOLD;
- the final model: it must be the last committed checkpoint's model, and the platform's
  own held-out evaluation must not be worse than the reported metric by more than
  VERIFY_METRIC_TOLERANCE.

Pass → completed. Fail → one Dispute for the attempt, the attempt's work neither charged
nor paid (metering.job_statement), and the job re-placed from the last checkpoint before
that attempt (or from scratch). Who is at fault decides what else happens (attribution):
- what node rank 0 alone produced — the checkpoints and the model it uploaded, their
  commitments, the metric it reported — is rank 0's: the dispute is attributed to it, the
  slash task is enqueued and the node excluded;
- a replay that does not reproduce a DDP attempt across nodes is pinned on a node only by
  the per-rank gradient commitments (every node's gradients are averaged into each step; a
  corrupting rank 1 and a tampering rank 0 leave the same checkpoints). Each rank commits,
  at every step, projections of its own gradient and of the parameters onto vectors made
  from the job's seed, and the SHA-256 of the state each stretch starts from
  (workers/training/commitments.py); every node's agent uploads its own copy of every
  rank's numbers (services/commitments.py). The torch half judges the first failed
  segment's first step, where every rank must have trained from the checkpoint's exact
  bits, and names the ranks whose committed gradient is not what their data gives, only
  when every node's copy agrees and the named ranks stand out
  (workers/training/replay.attribute_segment): an honest rank's gradient there depends on
  nothing another rank sends. Named: the dispute is opened on the culprit node's
  assignment, attributed, its slash queued (to the treasury) and only that node excluded.
  Otherwise the dispute is not attributed, nobody is slashed automatically (staff review
  it), and every node of the attempt is left out of this job's next placement — no blame,
  no reputation cost. The vectors are public: a rank that crafts a corruption they do not
  see, or commits other numbers than it sent, is caught by the replay but not named
  (docs/architecture.md, "What it cannot attribute");
- a check that cannot finish (an error, a crash, a time limit) is retried a bounded number
  of times (VERIFY_MAX_RUNS runs of the check in all, whatever retried it), then ends as an
  unattributed `verification_error` dispute for staff: a job never stays `verifying`.
Idempotent: a redelivered task finds the report final and does nothing.

The checks of single checkpoints (on upload, and the replay of a broken attempt's resume
point) are in services/checkpoint_checks.py; who is at fault, in services/attribution.py.
A little over 400 lines, most of them this docstring: the plan, the run and its outcomes
are one workflow, read top to bottom.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .. import job_states, task_names
from ..errors import NotFound
from ..models import Assignment, Checkpoint, CodeBundle, Dataset, Dispute, Job, VerificationReport
from ..selectors.checkpoints import checkpoints_resumable
from ..selectors.determinism import determinism_of_job
from ..selectors.execution import is_diloco
from . import enqueue, placement
from .attribution import Finding, attribute, attribution_notes, dispute_open, whose_work
from .bundles import bundle_plain_path
from .commitments import commitment_tables
from .datasets import dataset_plain_path

log = logging.getLogger(__name__)

S = Job.Status
R = VerificationReport.Status
FINAL = (R.PASSED, R.FAILED, R.ERROR)
# As long as a verify task may run (workers/tasks_verify.py's time limit); a check started
# longer ago than this died with its worker.
RUN_LIMIT = timedelta(seconds=1800)
VERIFY_TASK = task_names.VERIFY_ATTEMPT
VALIDATE_TASK = task_names.CHECKPOINT_VALIDATE
# Runs of one attempt's check, whoever started them (task retries, redeliveries after a
# worker died, the stale re-queue): after this many, the check ends as verification_error.
VERIFY_MAX_RUNS = 4


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
class Outcome:
    segments: list[dict] = field(default_factory=list)
    replay_steps: int = 0
    train_steps: int = 0
    metric_measured: float | None = None
    notes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    attribution: dict | None = None  # workers.verify's, for a DDP attempt across nodes


@contextlib.contextmanager
def check_inputs(job: Job) -> Iterator[tuple[dict, dict]]:
    """(dataset, task) as the torch half takes them: the dataset as the runtime loads it (an
    upload decrypted to a temporary file — a zip is unpacked by the torch half, with the
    agent's checks), and for a consumer's code bundle, the `bundle` of the plan (the archive
    as uploaded, checked against its SHA-256). Both last as long as the block."""
    with task_inputs(bundle=job.bundle, dataset=job.dataset, dataset_ref=job.dataset_ref) as inputs:
        if job.weights is None:
            yield inputs
            return
        # A fine-tune: replay from step 0 starts from its input weights, as training did.
        with dataset_plain_path(job.weights) as path:
            yield inputs[0], {**inputs[1], "weights": {"path": path, "sha256": job.weights.sha256}}


@contextlib.contextmanager
def task_inputs(*, bundle: CodeBundle | None, dataset: Dataset | None,
                dataset_ref: str) -> Iterator[tuple[dict, dict]]:
    """check_inputs for a task, data and dataset reference not yet a job's (a quote's
    determinism check: services/determinism.py)."""
    with contextlib.ExitStack() as stack:
        task: dict = {}
        if bundle is not None:
            archive = stack.enter_context(bundle_plain_path(bundle))
            task["bundle"] = {"archive": archive, "kind": bundle.kind, "entry": bundle.entry}
        if dataset_ref.startswith("sample:"):
            yield {"kind": "sample", "name": dataset_ref.removeprefix("sample:")}, task
            return
        if dataset is None and bundle is not None and not dataset_ref:
            yield {"kind": "none"}, task  # a bundle that makes its own data
            return
        if dataset is None:
            raise NotFound("The job's dataset is gone.")
        path = stack.enter_context(dataset_plain_path(dataset))
        if dataset.kind == "zip":
            yield {"kind": "zip", "archive": path}, task
        else:
            yield {"kind": "csv", "path": path}, task


def metric_inflated(reported: float, measured: float, tolerance: float, *, lower_is_better: bool) -> bool:
    """The reported metric is better than the model achieves, in the task's own sense of
    better (a task reporting `loss` or `mae` that says less than it measures is inflating)."""
    better_by = (measured - reported) if lower_is_better else (reported - measured)
    return better_by > tolerance * max(abs(measured), 1e-9)


# The torch half (workers/verify, run by the verify task, which passes it in): plain data in
# and out, so that this module, and every process but the verify worker, runs without torch.
CheckAttempt = Callable[[dict, dict], dict]  # (plan, dataset) -> result: workers.verify.check_attempt
CheckpointProblem = Callable[..., "str | None"]  # workers.verify.checkpoint_problem


def _plan(job: Job, attempt: int, rng: secrets.SystemRandom | None, out: Outcome) -> dict:
    """What to check of a finished attempt: the counted checkpoints, the segments drawn now,
    and the final model. Findings that need no torch go straight into `out`."""
    parts = list(job.assignments.filter(attempt=attempt).order_by("node_rank"))
    rank0 = next(a for a in parts if a.node_rank == 0)
    start = rank0.resume_step or 0
    out.train_steps = max(0, job.current_step - start)
    own = list(rank0.checkpoints.order_by("step"))
    counted, out.notes = counted_checkpoints(own, finished_at=rank0.finished_at)
    resume = (checkpoints_resumable(job.checkpoints.filter(step=start)).exclude(assignment=rank0).first()
              if rank0.resume_step else None)
    by_step = {c.step: c for c in ([resume] if resume else []) + counted}
    paths: dict[int, str | None] = {step: c.file.path for step, c in by_step.items()}
    if start == 0:
        # A fresh attempt starts from a state the verifier builds itself (the job's seed, or
        # its input weights): the stretch up to the first checkpoint is drawn like the others,
        # or work before it would never be replayed.
        paths.setdefault(0, None)
    segments: list[tuple[int, int]] = []
    if is_diloco(job):
        out.notes.append("DiLoCo across nodes: step replay is not checked (each node trains its own "
                         "group and the outer steps mix every node's work); the final model and "
                         "its held-out metric are")
    else:
        segments = choose_segments(sorted(paths), train_steps=out.train_steps,
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
    # The final model must be the last committed checkpoint's, and as good as reported.
    final = by_step.get(job.current_step)
    if final is None and job.artifact and out.train_steps > 0:
        out.findings.append(Finding(Dispute.Reason.CHECKPOINT_UNCOMMITTED, (
            f"No checkpoint was committed at the final step {job.current_step}, so the uploaded "
            "model cannot be tied to the checked work.")))
    elif final is None:
        out.notes.append(f"no counted checkpoint at the final step {job.current_step}")
    needed = {step for seg in segments for step in seg}
    return {
        "template": job.template, "params": job.params, "world_size": sum(a.gpus for a in parts),
        "checkpoints": {step: paths[step] for step in sorted(needed)},
        "segments": segments, "threshold": settings.VERIFY_REPLAY_THRESHOLD,
        "check_model": True, "artifact": job.artifact.path if job.artifact else None,
        "final_checkpoint": final.file.path if final else None,
        "final_step": final.step if final else None,
        "commitments": attempt_commitments(job, parts, segments),
    }


def attempt_commitments(job: Job, parts: list[Assignment], segments: list[tuple[int, int]]) -> dict | None:
    """Each node's copy of the gradient commitments of the segments' steps, for a DDP
    attempt across nodes (the replay names a rank from them only when every copy agrees)."""
    if len(parts) < 2 or is_diloco(job) or not segments:
        return None
    steps = {s for a, b in segments for s in range(a, b)}
    return commitment_tables(job, parts[0].attempt, steps)


def _check(job: Job, attempt: int, rng: secrets.SystemRandom | None = None, *,
           check: CheckAttempt) -> Outcome:
    out = Outcome()
    plan = _plan(job, attempt, rng, out)
    stored = determinism_of_job(job) if job.bundle_id is not None and not is_diloco(job) else None
    if stored is not None and stored.status == stored.Status.DONE:
        # Checked before the consumer paid (services/determinism.py): the same answer now.
        plan["determinism"] = {"deterministic": stored.deterministic, "steps": stored.steps,
                               "rel_l2": stored.rel_l2, "seconds": stored.seconds}
    with check_inputs(job) as (dataset, task):
        result = check({**plan, **task}, dataset)  # minutes of torch
    if result.get("determinism") and not result["determinism"]["deterministic"]:
        when = "found before the consumer paid" if "determinism" in plan else "found now"
        out.notes.append(f"this job's own task does not give the same bits twice from the same "
                         f"state ({when}), so its steps were not replayed: its final model and "
                         "held-out evaluation were checked")
    out.segments, out.replay_steps = result["segments"], result["replay_steps"]
    out.metric_measured = result["metric_measured"]
    out.attribution = result.get("attribution")
    out.findings[:0] = [Finding(Dispute.Reason(reason), detail) for reason, detail in result["findings"]]
    if (out.metric_measured is not None and job.metric_value is not None
            and metric_inflated(job.metric_value, out.metric_measured, settings.VERIFY_METRIC_TOLERANCE,
                                lower_is_better=bool(result.get("metric_lower_is_better")))):
        out.findings.append(Finding(Dispute.Reason.METRIC_INFLATED, (
            f"Reported held-out {result['metric_name']} {job.metric_value:.6g}; the platform measures "
            f"{out.metric_measured:.6g} on the same split with the same model.")))
    return out


# --- running --------------------------------------------------------------------------
def verification_run(*, report_id: int, check: CheckAttempt, rng: secrets.SystemRandom | None = None) -> str:
    """Check one attempt with `check` (the torch half) and act on the outcome, exactly once.
    Returns the report's status."""
    with transaction.atomic():
        report = VerificationReport.objects.select_for_update().filter(pk=report_id).first()
        if report is None or report.status in FINAL:
            return report.status if report else "missing"
        if report.runs >= VERIFY_MAX_RUNS:
            # Every earlier run died without an answer (a crash, a worker killed, the time
            # limit): a further one would do the same, and the job must leave verifying.
            runs = report.runs
        else:
            runs = 0
            report.status, report.started_at, report.runs = R.RUNNING, timezone.now(), report.runs + 1
            report.save(update_fields=["status", "started_at", "runs"])
    if runs:
        verification_error(report_id=report_id, message=f"the check was started {runs} times and never "
                                                          "finished")
        return R.ERROR
    job = Job.objects.select_related("dataset").get(pk=report.job_id)
    outcome = _check(job, report.attempt, rng, check=check)  # torch: outside any transaction

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
        report.reasons = ([f.detail for f in outcome.findings] + [f"note: {n}" for n in outcome.notes]
                          + attribution_notes(outcome.attribution))
        report.finished_at = timezone.now()
        report.save()
        if outcome.findings:
            _failed(job, report, outcome.findings, attribution=outcome.attribution)
        elif job.status == S.VERIFYING and job.attempt == report.attempt:
            _passed(job, report)
    return report.status


def verification_retry_due(*, report_id: int) -> bool:
    """A run of the check raised: may it be tried again? (Runs are counted on the report, so
    retries, redeliveries and the stale re-queue together stay within VERIFY_MAX_RUNS.)"""
    runs = VerificationReport.objects.filter(pk=report_id).values_list("runs", flat=True).first()
    return runs is not None and runs < VERIFY_MAX_RUNS


def verification_error(*, report_id: int, message: str) -> None:
    """The check itself could not finish, after its bounded retries. The job does not wait
    for ever with the deposit locked: the report ends `error`, an unattributed
    `verification_error` dispute goes to staff (no automatic slash: the fault may be ours),
    the attempt's work is not charged until staff dismiss it, and the job leaves verifying
    as after a failed check (placed again, or failed after JOB_MAX_ATTEMPTS)."""
    with transaction.atomic():
        report = VerificationReport.objects.select_for_update().get(pk=report_id)
        if report.status in FINAL:
            return
        job = Job.objects.select_for_update().get(pk=report.job_id)
        report.status, report.finished_at = R.ERROR, timezone.now()
        report.reasons = [f"error: {message[:500]}"]
        report.save(update_fields=["status", "finished_at", "reasons"])
        _failed(job, report, [Finding(Dispute.Reason.VERIFICATION_ERROR,
                                      f"The work could not be verified: {message[:300]}.")],
                outcome="verification_error")


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


def _failed(job: Job, report: VerificationReport, findings: list[Finding], *,
            outcome: str = "verification_failed", attribution: dict | None = None) -> None:
    parts = list(Assignment.objects.select_related("node").filter(job=job, attempt=report.attempt)
                 .order_by("node_rank"))
    named, at_fault = attribute(parts, findings, attribution, consumer_code=job.bundle_id is not None)
    if named.reason == Dispute.Reason.VERIFICATION_ERROR:
        at_fault = []
    # One dispute (and so at most one slash) per node at fault, named by its attributable
    # finding if any; the others are its evidence. Two findings are one piece of dishonest
    # work, not two. An unattributed dispute still names rank 0's assignment (a dispute is
    # about an attempt's work) but is never slashed without staff and costs no reputation.
    dispute = dispute_open(job, parts, named, at_fault, findings, report=report)
    if job.status != S.VERIFYING or job.attempt != report.attempt:
        return
    why = "; ".join(sorted({f.reason for f in findings}))
    if named.reason == Dispute.Reason.VERIFICATION_ERROR:
        whose = "this attempt's work (staff review it; nobody is slashed automatically)"
    else:
        whose = whose_work(parts, at_fault)
    message = (f"Verification {'could not finish' if outcome == 'verification_error' else 'failed'} "
               f"({why}) for {whose}: {named.detail} That work is not charged; the job runs again "
               "elsewhere.")
    if job.attempt >= placement.max_attempts():
        job_states.transition(job_id=job.pk, to=S.FAILED, reason=outcome,
                              message=message + f" Gave up after {job.attempt} placements.",
                              data={"verification": report.pk, "dispute": dispute.pk})
        return
    job_states.transition(job_id=job.pk, to=S.INTERRUPTED, reason=outcome,
                          message=message, data={"verification": report.pk, "dispute": dispute.pk})
    enqueue.match_job(job.pk)
