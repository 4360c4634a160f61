"""Deadlines enforced (issue 12, item 9): until now neither a job's deadline nor its
escrow's reclaim deadline was looked at while matching or running, so a job could run past
the moment its consumer may take the deposit back, and its providers were never paid.

- A job must stop by `stop_by`: its deadline, or earlier, DEADLINE_SETTLE_MARGIN_S before
  its escrow's reclaim deadline (the deadline the chain holds), so that its settlement
  lands while the deposit is still in the escrow.
- A running job that reaches it checkpoints and stops with the budget pause
  (services/budget.py: `assignment.pause`, the ranks checkpoint at one step), and then ends
  `cancelled` with reason `deadline_reached` instead of `paused`; the work up to its
  checkpoint settles like any cancelled job's. A job waiting for machines (or paused) past
  it is cancelled the same way.
- A job is not placed when the time left to `stop_by` is shorter than the time it needs:
  what its budget left buys at its highest price on all its GPUs, capped by its expected
  duration (the share of its steps not done yet). The quote and the timeline say so.
Pure computations here; budget.py watches, placement.py and matching.py refuse.
"""

from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings

from ..models import Escrow, Job
from ..selectors.metering import budget_limit, job_metered


def _escrow_deadline(job: Job) -> datetime | None:
    try:
        escrow = job.escrow
    except Escrow.DoesNotExist:
        return None
    return escrow.deadline if escrow.status == Escrow.Status.FUNDED else None


def stop_by(*, deadline: datetime, escrow_deadline: datetime | None = None) -> datetime:
    """When the work must have stopped: the deadline, or the escrow's reclaim deadline less
    the settlement margin when that comes first."""
    if escrow_deadline is None:
        return deadline
    return min(deadline, escrow_deadline - timedelta(seconds=settings.DEADLINE_SETTLE_MARGIN_S))


def job_stop_by(job: Job) -> datetime:
    return stop_by(deadline=job.deadline, escrow_deadline=_escrow_deadline(job))


def needed_s(*, budget_left: Decimal, max_price_per_gpu_hour: Decimal, gpus: int,
             duration_hours: Decimal, done_share: float = 0.0) -> float:
    """The least time the job needs once placed: what the budget left buys at its highest
    price on all its GPUs, but no more than the expected duration left."""
    per_s = max_price_per_gpu_hour * gpus / Decimal(3600)
    buys = float(max(Decimal(0), budget_left) / per_s) if per_s > 0 else 0.0
    return min(buys, float(duration_hours) * 3600 * max(0.0, 1.0 - done_share))


def shortfall_reason(*, until: datetime, now: datetime, need_s: float, escrowed: bool) -> dict | None:
    """The quote's reason (`code: deadline`) when the time to `until` is shorter than
    `need_s`, else None."""
    left = (until - now).total_seconds()
    if left >= need_s:
        return None
    which = ("its deadline, or its escrow's reclaim deadline less the time settlement needs"
             if escrowed else "its deadline")
    return {"code": "deadline", "constraint": "deadline",
            "message": f"The job must stop by {until.isoformat(timespec='seconds')} ({which}): "
                       f"{max(0.0, left) / 3600:.2f} h from now, less than the {need_s / 3600:.2f} h its "
                       "budget and expected duration call for. Move the deadline later or shorten the "
                       "job."}


def job_shortfall(job: Job, *, now: datetime) -> dict | None:
    """Why a job waiting for machines may not be placed now because of its deadlines."""
    done = job.current_step / job.total_steps if job.total_steps else 0.0
    escrow_deadline = _escrow_deadline(job)
    until = stop_by(deadline=job.deadline, escrow_deadline=escrow_deadline)
    if (until - now).total_seconds() >= float(job.duration_hours) * 3600 * (1 - done):
        return None  # enough for the whole expected duration: no need to meter the spend
    need = needed_s(budget_left=budget_limit(job) - job_metered(job, now=now),
                    max_price_per_gpu_hour=job.max_price_per_gpu_hour, gpus=job.nodes * job.gpus_per_node,
                    duration_hours=job.duration_hours, done_share=done)
    return shortfall_reason(until=until, now=now, need_s=need, escrowed=escrow_deadline is not None)


def reached(job: Job, *, now: datetime, lead_s: float = 0.0) -> bool:
    """The job is within `lead_s` of having to stop (the time a pause takes to land)."""
    return now >= job_stop_by(job) - timedelta(seconds=lead_s)
