"""Where a job stands, as the job page and *My jobs* say it: how it ended, what it paid and
what came back, and the status filter and search of *My jobs*.

A cancelled or failed job that was funded goes on to `settled` or `refunded` (job_states):
its status alone would call a cancelled job "settled". How it ended is the last of its
timeline's transitions to cancelled, failed or completed (`ended_as`).
"""

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import OuterRef, Q, QuerySet, Subquery

from ..models import Escrow, Job, JobEvent, Settlement
from ..money import tusd
from .metering import job_metered

S = Job.Status
ENDINGS = (S.CANCELLED, S.FAILED, S.COMPLETED)
CLOSED = (S.SETTLED, S.REFUNDED)
ENDING_WORDS: dict[str, str] = {S.CANCELLED: "Cancelled", S.FAILED: "Failed", S.COMPLETED: "Completed"}
# The only status in which the job trains, so the only one with a throughput and an ETA.
RUNNING = frozenset({S.RUNNING})

# *My jobs*' status filter: GET ?status=<key>.
STATUS_FILTERS: dict[str, tuple[str, Q | None]] = {
    "": ("All jobs", None),
    "active": ("In progress", Q(status__in=[S.DRAFT, S.SUBMITTED, S.FUNDED, S.MATCHING, S.RUNNING,
                                            S.VERIFYING])),
    "paused": ("Paused", Q(status=S.PAUSED)),
    "interrupted": ("Interrupted", Q(status=S.INTERRUPTED)),
    "completed": ("Completed", Q(status=S.COMPLETED) | Q(status__in=CLOSED, ended_as=S.COMPLETED)),
    "cancelled": ("Cancelled", Q(status=S.CANCELLED) | Q(status__in=CLOSED, ended_as=S.CANCELLED)),
    "failed": ("Failed", Q(status=S.FAILED) | Q(status__in=CLOSED, ended_as=S.FAILED)),
}


def with_ending(jobs: QuerySet[Job]) -> QuerySet[Job]:
    """`ended_as` on each job: cancelled, failed, completed or None (still going)."""
    last = (JobEvent.objects.filter(job=OuterRef("pk"), to_status__in=ENDINGS)
            .order_by("-id").values("to_status")[:1])
    return jobs.annotate(ended_as=Subquery(last))


def jobs_filtered(jobs: QuerySet[Job], *, status: str = "", search: str = "") -> QuerySet[Job]:
    """`jobs` (already scoped to the caller) with `ended_as`, narrowed to a STATUS_FILTERS key
    (an unknown key filters nothing) and to a search: "#12" or "12" is a job id, other words
    match the name or the template."""
    jobs = with_ending(jobs)
    condition = STATUS_FILTERS.get(status, ("", None))[1]
    if condition is not None:
        jobs = jobs.filter(condition)
    search = search.strip()
    if search:
        match = Q(name__icontains=search) | Q(template__icontains=search)
        number = search.lstrip("#")
        if number.isdigit() and len(number) < 12:
            match |= Q(pk=int(number))
        jobs = jobs.filter(match)
    return jobs


def _ending(job: Job) -> str | None:
    ended = getattr(job, "ended_as", "unknown")
    if ended == "unknown":  # not annotated: one query
        ended = (job.events.filter(to_status__in=ENDINGS).order_by("-id")
                 .values_list("to_status", flat=True).first())
    return ended


def _related(job: Job, name: str):
    try:
        return getattr(job, name)
    except (Settlement.DoesNotExist, Escrow.DoesNotExist):
        return None


@dataclass(frozen=True)
class JobState:
    """`key` is the badge (the status, or how a settled or refunded job ended: "cancelled",
    "failed"); `summary` the sentence beside it; `paid` and `refunded` are known once the
    escrow is closed (None before); `spent` is what the work cost: the settlement's charge,
    else the metering at the locked prices."""
    key: str
    summary: str
    running: bool
    spent: Decimal
    paid: Decimal | None = None
    refunded: Decimal | None = None


def job_state(job: Job, *, spent: Decimal | None = None) -> JobState:
    """How the job page and *My jobs* describe `job` (prefetch `settlement` and `escrow`
    and use `with_ending` for many jobs)."""
    ended = _ending(job) if job.status in CLOSED or job.status in ENDINGS else None
    settlement = _related(job, "settlement")
    escrow = _related(job, "escrow")
    paid = refunded = None
    if settlement is not None and settlement.status == Settlement.Status.SETTLED:
        paid, refunded = settlement.charged, settlement.refunded
    elif job.status == S.REFUNDED or (escrow is not None and escrow.status == Escrow.Status.REFUNDED):
        paid, refunded = Decimal(0), escrow.amount if escrow is not None else None
    if settlement is not None:
        cost = settlement.charged
    else:
        cost = spent if spent is not None else job_metered(job)

    key = job.status
    if job.status in CLOSED and ended in (S.CANCELLED, S.FAILED):
        key = ended
    summary = _summary(job, ended=ended, paid=paid, refunded=refunded, cost=cost,
                       escrowed=escrow is not None and escrow.status != Escrow.Status.UNFUNDED)
    return JobState(key=key, summary=summary, running=job.status in RUNNING, spent=cost,
                    paid=paid, refunded=refunded)


def _summary(job: Job, *, ended: str | None, paid, refunded, cost: Decimal, escrowed: bool) -> str:
    how = ENDING_WORDS.get(ended or "")
    if paid is not None:
        money = f"{tusd(paid)} paid for the work done, {tusd(refunded)} refunded"
        if job.status == S.REFUNDED or (paid == 0 and job.status not in ENDINGS):
            money = f"nothing paid, {tusd(refunded)} refunded"
        return f"{how}; {money}." if how else f"{job.get_status_display()}: {money}."
    if job.status in (S.CANCELLED, S.FAILED):
        return (f"{how}: {tusd(cost)} of work done at the locked prices; the rest of the "
                "escrow is refunded once it is settled." if escrowed else
                f"{how}: {tusd(cost)} of work done at the locked prices.")
    return str(job.get_status_display())
