"""What each assignment of a job is owed: GPU-seconds at its locked price, from its timeline.

The one metering. The settlement's statement (`payments.settlement_prepare`), the live spend
(budget safety, the job page, *My jobs*, the API) and a provider's earnings (*My nodes*) all
come from `job_charges`; two computations of the same money once told providers they had
earned what the settlement then did not pay them (issue 12, item 11).

Rules:
- an assignment is charged from its start until it finished (a running one: until `now`,
  for the live figures; the statement meters stopped jobs only);
- an attempt that broke (a node lost or failed) is charged only up to its last committed
  checkpoint (`paid_checkpoint_at`): what came after is redone and not paid for; only a
  part that succeeded (a DiLoCo survivor) keeps all its work;
- an attempt whose work failed verification (an open or upheld dispute) is not charged.

A leaf of the read side: it imports only models, settings, the checkpoint selector (itself a leaf) and the
money helpers, so that services, selectors and views may all use it without an import cycle.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from ..models import Assignment, Dispute, Escrow, Job, Settlement
from ..money import round_down
from .checkpoints import checkpoints_payable

A = Assignment.Status


@dataclass(frozen=True)
class Charge:
    assignment: Assignment
    seconds: float
    amount: Decimal
    note: str = ""


def paid_checkpoint_at(job: Job, attempt: int) -> datetime | None:
    """When the last checkpoint of a broken attempt that counts as paid work was committed
    (None: nothing of that attempt is paid)."""
    # Only a checkpoint checked valid on upload counts (issue 12, item 4): a provider that
    # commits garbage on schedule and vanishes is paid nothing for it.
    ckpt = (checkpoints_payable(job.checkpoints.filter(assignment__attempt=attempt))
            .order_by("-committed_at").first())
    return ckpt.committed_at if ckpt else None


def _broken_attempts(job: Job, assignments) -> dict[int, datetime | None]:
    return {attempt: paid_checkpoint_at(job, attempt)
            for attempt in {a.attempt for a in assignments if a.status in (A.LOST, A.FAILED)}}


def voided_attempts(job: Job) -> dict[int, str]:
    """Attempts whose work failed verification (an open or upheld dispute), with the note
    their statement lines carry: the job re-ran that work elsewhere."""
    out: dict[int, str] = {}
    # job.disputes.all() uses the live snapshots' prefetch (one query for many jobs).
    disputes = sorted((d for d in job.disputes.all() if d.status != Dispute.Status.DISMISSED),
                      key=lambda d: d.pk)
    attempts = dict(Assignment.objects.filter(pk__in={d.assignment_id for d in disputes})
                    .values_list("pk", "attempt")) if disputes else {}
    for d in disputes:
        out.setdefault(attempts[d.assignment_id],
                       f"failed verification ({d.reason}, dispute #{d.pk}): not charged")
    return out


def _charged_until(a: Assignment, broken: dict[int, datetime | None], now: datetime | None
                   ) -> datetime | None:
    finished = a.finished_at or now
    if a.started_at is None or finished is None:
        return None
    # Only a part that succeeded kept all its work (a DiLoCo survivor); the peers stopped
    # (cancelled) when the attempt broke redo theirs from the checkpoint like the lost node.
    if a.attempt not in broken or a.status == A.SUCCEEDED:
        return finished
    last = broken[a.attempt]
    return min(finished, last) if last else None


def job_charges(job: Job, *, now: datetime | None = None, assignments=None) -> list[Charge]:
    """One charge per assignment of the job. `now` counts running parts until then (live
    figures); without it they count nothing yet (the statement of a stopped job).
    `assignments` defaults to the job's (its prefetch, when the caller made one)."""
    assignments = list(job.assignments.all() if assignments is None else assignments)
    broken = _broken_attempts(job, assignments)
    voided = voided_attempts(job)
    out = []
    for a in assignments:
        if a.attempt in voided:  # failed verification: redone elsewhere, neither charged nor paid
            out.append(Charge(a, 0.0, Decimal(0), voided[a.attempt]))
            continue
        until = _charged_until(a, broken, now)
        seconds = max(0.0, (until - a.started_at).total_seconds()) if until else 0.0
        amount = round_down(a.price_per_gpu_hour * a.gpus * Decimal(seconds) / Decimal(3600))
        note = "work after the last checkpoint is not charged" if a.attempt in broken else ""
        out.append(Charge(a, seconds, amount, note))
    return out


def job_metered(job: Job, *, now: datetime | None = None) -> Decimal:
    """The job's spend so far at the locked prices (running parts until `now`)."""
    now = now or timezone.now()
    return sum((c.amount for c in job_charges(job, now=now)), Decimal(0))


def job_statement(job: Job) -> tuple[list[dict], Decimal]:
    """One line per assignment: GPU-seconds charged at its locked price. Returns the lines
    and the total (not yet capped by the escrow)."""
    assignments = job.assignments.select_related("node__provider").order_by("attempt", "node_rank", "pk")
    lines, total = [], Decimal(0)
    for c in job_charges(job, assignments=assignments):
        a = c.assignment
        total += c.amount
        lines.append({
            "assignment": a.pk, "attempt": a.attempt, "rank": a.node_rank, "node": a.node.name,
            "provider": a.node.provider_id, "provider_name": a.node.provider.name, "status": a.status,
            "gpus": a.gpus, "gpu_seconds": round(c.seconds * a.gpus, 1),
            "price_per_gpu_hour": str(a.price_per_gpu_hour), "amount": str(c.amount), "note": c.note,
        })
    return lines, total


def budget_limit(job: Job) -> Decimal:
    """What the job may spend: the escrowed amount when the escrow is on and funded, else
    the job's budget."""
    if settings.ESCROW_ENABLED:
        try:
            escrow = job.escrow
        except Escrow.DoesNotExist:
            escrow = None
        if escrow is not None and escrow.status == Escrow.Status.FUNDED:
            return escrow.amount
    return job.budget


def provider_earned(provider_id: int, *, now: datetime | None = None) -> Decimal:
    """What a provider's nodes are owed at the locked prices, before the platform fee: the
    same charges as the statements (a settled job's frozen statement; the others metered
    until `now`)."""
    now = now or timezone.now()
    job_ids = set(Assignment.objects.filter(node__provider_id=provider_id, started_at__isnull=False)
                  .values_list("job_id", flat=True))
    total = Decimal(0)
    settled = dict(Settlement.objects.filter(job_id__in=job_ids).values_list("job_id", "statement"))
    for statement in settled.values():
        total += sum((Decimal(line["amount"]) for line in statement if line["provider"] == provider_id),
                     Decimal(0))
    jobs = Job.objects.filter(pk__in=job_ids - set(settled)).prefetch_related("assignments__node",
                                                                                "disputes")
    for job in jobs:
        total += sum((c.amount for c in job_charges(job, now=now)
                      if c.assignment.node.provider_id == provider_id), Decimal(0))
    return round_down(total)
