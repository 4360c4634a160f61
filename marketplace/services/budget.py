"""Budget safety: a running job never spends past its budget without the consumer knowing.

The spend is the settlement's own metering (metering.job_metered) at the locked prices. A
periodic pass (`budget_watch`, Celery beat every BUDGET_CHECK_INTERVAL_S) checks the running
jobs: the agent ingest is left alone, and a few seconds of lag are covered by the lead time.
- at 80 % of the budget: one timeline note, and a warning on the job page and dashboards;
- once the budget left covers less than BUDGET_PAUSE_LEAD_S of running at the current
  placement's rate (longer when the job's throughput says its steps are slow, see
  `lead_seconds`): each node is told to checkpoint and stop (`assignment.pause`); when
  every node has, the job is `paused` at that checkpoint's step;
- a node that has not paused BUDGET_PAUSE_GRACE_S after it was asked (an agent that does
  not know the message, a hung rank) is stopped, and the job pauses at its last committed
  checkpoint. Settlement never charges more than the escrow, so a pause that lands late
  costs the consumer nothing beyond it.
Raising the budget (escrow off) or topping up the escrow resumes a paused job from its
checkpoint: paused → matching → running. Settlement caps the charge at the escrow anyway.

The budget is the escrowed amount when the escrow is on, else Job.budget.
"""

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .. import job_states
from ..errors import Conflict, MarketError
from ..models import Assignment, Escrow, Job
from ..money import MICRO, amount, tusd
from ..selectors.budget import WARN_AT
from ..selectors.execution import is_diloco
from ..selectors.metering import budget_limit, job_metered
from . import deadlines, enqueue
from .agent_protocol import pause_message, send_to_node
from .assignments import job_stop_assignments, lock_job_and_parts
from .jobs import job_cancel

S = Job.Status
A = Assignment.Status
# The ranks look for a pause every this many steps (docs/agent-protocol.md, assignment.pause).
PAUSE_CHECK_STEPS = 10


@dataclass(frozen=True)
class BudgetCheck:
    """A job's budget at one moment. Pure: the projection is unit-tested on its own."""

    limit: Decimal
    spent: Decimal
    rate_per_s: Decimal  # what the job spends a second at its current placement

    @property
    def remaining(self) -> Decimal:
        return max(Decimal(0), self.limit - self.spent)

    @property
    def fraction(self) -> Decimal:
        return self.spent / self.limit if self.limit > 0 else Decimal(1)

    @property
    def seconds_left(self) -> float | None:
        """How long the rest lasts at the current rate (None: nothing is running)."""
        return float(self.remaining / self.rate_per_s) if self.rate_per_s > 0 else None

    def verdict(self, *, lead_s: float) -> str:
        """"stop": the budget is gone; "pause": what is left lasts less than `lead_s` (the
        time a pause takes to reach the nodes and be checkpointed); "warn": 80 % spent."""
        if self.spent >= self.limit:
            return "stop"
        if self.remaining <= self.rate_per_s * Decimal(str(lead_s)):
            return "pause"
        if self.fraction >= WARN_AT:
            return "warn"
        return "ok"


def lead_seconds(job: Job) -> float:
    """How long before the budget runs out the pause is asked for: BUDGET_PAUSE_LEAD_S, or
    longer for a job whose steps are slow (from its reported throughput), so that the next
    check (two intervals of PAUSE_CHECK_STEPS steps, after the next budget pass) comes first."""
    lead = settings.BUDGET_PAUSE_LEAD_S
    batch = (job.params or {}).get("batch_size")
    if job.samples_per_sec and isinstance(batch, int) and batch > 0:
        step_s = batch * job.nodes * job.gpus_per_node / job.samples_per_sec
        lead = max(lead, settings.BUDGET_CHECK_INTERVAL_S + 2 * PAUSE_CHECK_STEPS * step_s)
    return lead


def _rate(assignments) -> Decimal:
    return sum((a.price_per_gpu_hour * a.gpus / Decimal(3600) for a in assignments
                if a.status in Assignment.ACTIVE and a.started_at is not None), Decimal(0))


def budget_check(job: Job, *, now=None, spent: Decimal | None = None) -> BudgetCheck:
    assignments = list(job.assignments.all())
    return BudgetCheck(limit=budget_limit(job),
                       spent=job_metered(job, now=now) if spent is None else spent,
                       rate_per_s=_rate(assignments))


# --- the periodic pass ---------------------------------------------------------------
def budget_watch(*, now=None) -> dict[str, int]:
    """Check every running job's spend (Celery beat). Returns what it did, by kind."""
    now = now or timezone.now()
    done = {"warned": 0, "pausing": 0, "stopped": 0}
    jobs = (Job.objects.filter(status=S.RUNNING).select_related("escrow")
            .prefetch_related("assignments"))
    for job in jobs:
        check = budget_check(job, now=now)
        verdict = check.verdict(lead_s=lead_seconds(job))
        if verdict != "ok" and job.budget_warned_at is None:
            done["warned"] += _warn(job, check)
        elif verdict == "ok" and job.budget_warned_at is not None:
            Job.objects.filter(pk=job.pk).update(budget_warned_at=None)  # topped up: warn again later
        if job.pause_requested_at is not None:
            # Wait for the checkpoint (a rank may still be starting up) rather than lose the
            # work since the last one; the charge is capped by the escrow meanwhile.
            if (now - job.pause_requested_at).total_seconds() > settings.BUDGET_PAUSE_GRACE_S:
                done["stopped"] += job_budget_stop(job_id=job.pk, check=check)
        elif verdict in ("pause", "stop"):
            done["pausing"] += job_pause_request(job_id=job.pk, check=check)
        elif deadlines.reached(job, now=now, lead_s=lead_seconds(job)):
            # The same checkpoint-and-stop; _pause then ends the job instead of pausing it.
            done["pausing"] += job_pause_request(job_id=job.pk, check=check, why="deadline")
    done["expired"] = _deadlines_expire(now=now)
    return done


def _deadlines_expire(*, now) -> int:
    """Jobs not running (waiting for machines, interrupted, paused) that must have stopped
    by now are cancelled: their work so far settles, the rest of the deposit goes back."""
    margin = timedelta(seconds=settings.DEADLINE_SETTLE_MARGIN_S)
    waiting = (Job.objects.filter(status__in=S.WAITING)
               .filter(Q(deadline__lte=now) | Q(escrow__status=Escrow.Status.FUNDED,
                                                escrow__deadline__lte=now + margin))
               .select_related("escrow"))
    ended = 0
    for job in waiting:
        if deadlines.reached(job, now=now):
            until = deadlines.job_stop_by(job)
            job_cancel(job=job, reason="deadline_reached",
                       message=f"The job had to stop by {until.isoformat(timespec='seconds')} (its deadline"
                               + (", or its escrow's reclaim deadline less the time settlement needs"
                                  if until < job.deadline else "")
                               + f") and was {job.get_status_display().lower()}: it ends; the work done "
                               "so far is settled and the rest of the deposit goes back.")
            ended += 1
    return ended


def _warn(job: Job, check: BudgetCheck) -> int:
    claimed = Job.objects.filter(pk=job.pk, budget_warned_at__isnull=True).update(
        budget_warned_at=timezone.now())
    if claimed:
        left = check.seconds_left
        job_states.note(job_id=job.pk, reason="budget_warning",
                        data={"spent": str(check.spent), "limit": str(check.limit)},
                        message=f"80 % of the budget is spent: {amount(check.spent)} of {tusd(check.limit)}"
                                + (f" (about {left / 60:.0f} min left at this rate)" if left else "")
                                + ". At 100 % the job checkpoints and pauses; top up to keep it running.")
    return claimed


def job_pause_request(*, job_id: int, check: BudgetCheck, why: str = "budget") -> int:
    """Ask every node of a running job to checkpoint at its next step and stop. Once.
    `why`: "budget" (it pauses; a top-up resumes it) or "deadline" (it then ends)."""
    with transaction.atomic():
        claimed = Job.objects.filter(pk=job_id, status=S.RUNNING, pause_requested_at__isnull=True).update(
            pause_requested_at=timezone.now())
        if not claimed:
            return 0
        job = Job.objects.get(pk=job_id)
        left = check.seconds_left
        if why == "deadline":
            until = deadlines.job_stop_by(job)
            job_states.note(job_id=job_id, reason="deadline_stopping",
                            data={"stop_by": until.isoformat()},
                            message=f"The job must stop by {until.isoformat(timespec='seconds')}: the nodes "
                                    "checkpoint and stop, and the work done is settled.")
        else:
            job_states.note(job_id=job_id, reason="budget_pausing",
                            data={"spent": str(check.spent), "limit": str(check.limit)},
                            message=f"{amount(check.spent)} of {tusd(check.limit)} spent"
                                    + (f"; the rest lasts about {left:.0f} s" if left is not None else "")
                                    + ": the nodes checkpoint and pause.")
        if is_diloco(job):
            # DiLoCo nodes meet only at outer steps, so they cannot agree on a step to stop at:
            # they stop now and the job pauses at the last global checkpoint.
            return job_budget_stop(job_id=job_id, check=check)
        for a in job.assignments.filter(status__in=Assignment.ACTIVE):
            send_to_node(a.node_id, pause_message(a))
    return 1


def job_paused_by_nodes(*, job: Job, attempt: int) -> None:
    """Every node of the attempt checkpointed and stopped: the job is paused (called by the
    ingest with the job locked)."""
    if job.status != S.RUNNING or job.attempt != attempt:
        return
    if job.assignments.filter(attempt=attempt, status__in=Assignment.ACTIVE).exists():
        return
    _pause(job, how="every node checkpointed and stopped")


def job_budget_stop(*, job_id: int, check: BudgetCheck) -> int:
    """The nodes did not pause in time (or cannot agree on a step, DiLoCo): stop them; the
    job pauses at its last committed checkpoint."""
    with transaction.atomic():
        job = lock_job_and_parts(job_id)
        if job.status != S.RUNNING:
            return 0
        job_stop_assignments(job=job, reason="the job's budget is spent")
        _pause(job, how=f"the nodes were stopped ({amount(check.spent)} of {tusd(check.limit)} spent)")
    return 1


def _pause(job: Job, *, how: str) -> None:
    ckpt = job.checkpoints.filter(committed_at__isnull=False).order_by("-step").first()
    step = ckpt.step if ckpt else 0
    Job.objects.filter(pk=job.pk).update(current_step=step)
    if deadlines.reached(job, now=timezone.now(), lead_s=lead_seconds(job)):
        # It could not run on after a top-up: it ends, and settles what was done.
        until = deadlines.job_stop_by(job)
        job_states.transition(
            job_id=job.pk, to=S.CANCELLED, reason="deadline_reached",
            data={"step": step, "stop_by": until.isoformat()},
            message=f"Stopped at step {step}: the job had to stop by {until.isoformat(timespec='seconds')} "
                    + ("(its escrow's reclaim deadline less the settlement margin) " if until < job.deadline
                       else "(its deadline) ")
                    + "and its nodes checkpointed and stopped. The work done is settled; the rest of "
                      "the deposit goes back.")
        return
    job_states.transition(
        job_id=job.pk, to=S.PAUSED, reason="budget_paused", data={"step": step},
        message=f"Paused at step {step}: the budget is spent and {how}. "
                + ("Top up the escrow" if settings.ESCROW_ENABLED else "Raise the budget")
                + " to resume from that checkpoint.")


# --- resuming ------------------------------------------------------------------------
def job_resume_if_covered(*, job_id: int, actor=None) -> bool:
    """A paused job whose budget now covers more than the pause lead time (twice over, at
    the highest price it accepts) is matched again; it resumes from its checkpoint."""
    with transaction.atomic():
        job = Job.objects.select_for_update(of=("self",)).select_related("escrow").get(pk=job_id)
        if job.status != S.PAUSED:
            return False
        spent = job_metered(job)
        most = job.max_price_per_gpu_hour * job.nodes * job.gpus_per_node / Decimal(3600)
        check = BudgetCheck(limit=budget_limit(job), spent=spent, rate_per_s=most)
        if check.remaining <= most * Decimal(str(2 * settings.BUDGET_PAUSE_LEAD_S)):
            job_states.note(job_id=job.pk, reason="budget_still_short", actor=actor,
                            message=f"{tusd(check.limit)} covers the {tusd(spent)} spent but "
                                    "not enough more running to resume; top up further.")
            return False
        Job.objects.filter(pk=job.pk).update(
            pause_requested_at=None,
            budget_warned_at=None if check.fraction < WARN_AT else job.budget_warned_at)
        job_states.transition(job_id=job.pk, to=S.MATCHING, reason="budget_topped_up", actor=actor,
                              message=f"The budget is now {tusd(check.limit)} ({amount(spent)} spent): "
                                      f"resuming from step {job.current_step}.")
        enqueue.match_job(job.pk)
    return True


def job_budget_raise(*, job: Job, budget: Decimal, actor=None) -> Job:
    """Raise a job's budget. Idempotent (it sets the total, so a retry changes nothing).
    With the escrow off a paused job resumes; with it on, the escrow is topped up next
    (`job_fund` from the custodial wallet, or `fund_calls` for a browser wallet)."""
    budget = Decimal(budget).quantize(MICRO)
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.status in S.TERMINAL:
            raise Conflict(f"Job #{job.pk} is {job.get_status_display().lower()}; its budget is final.")
        if budget < job.budget:
            raise MarketError(f"The budget can only be raised (it is {tusd(job.budget)}).",
                              field="budget", code="budget_lowered")
        if budget == job.budget:
            return job
        previous, job.budget = job.budget, budget
        job.save(update_fields=["budget", "updated_at"])
        escrow_on = settings.ESCROW_ENABLED and job.status != S.SUBMITTED
        job_states.note(job_id=job.pk, reason="budget_raised", actor=actor,
                        message=f"Budget raised from {amount(previous)} to {tusd(budget)}"
                                + ("; top up the escrow to use it." if escrow_on else "."))
    if not settings.ESCROW_ENABLED:
        job_resume_if_covered(job_id=job.pk, actor=actor)
    job.refresh_from_db()
    return job
