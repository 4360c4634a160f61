"""A consumer's dispute of a finished job, and how staff resolve it.

The consumer opens it with a reason (`consumer_dispute_open`, the job's owner only, on a
completed or settled job, one open at a time). Staff decide in the admin:
- `consumer_dispute_refund`: the consumer gets its money back. While the escrow is still
  funded (the job is not settled yet) the whole deposit is refunded on chain
  (`payments.escrow_force_refund`); once settled, what was charged is paid back to the
  address that funded it, minted on a development chain; a real chain's treasury pays by
  hand (refused here with what to do).
- `consumer_dispute_slash`: the work was the providers' fault: each provider of the job's
  last attempt gets a `Dispute` (reason consumer_claim, attributed: staff decided) that the
  staking service slashes, to the treasury as every slash.
- `consumer_dispute_reject`: closed, nothing moves.
Every decision is audited and said on the job's timeline."""

from functools import partial

from django.db import IntegrityError, transaction
from django.utils import timezone

from .. import job_states
from ..chain import sender
from ..chain.deploy import is_dev_chain, operator_key, token_contract
from ..errors import Conflict, MarketError, PermissionDenied
from ..models import Assignment, ConsumerDispute, Dispute, Escrow, Job, Settlement
from ..money import to_units, tusd
from ..text import clean_text
from . import audit
from .payments import escrow_force_refund
from .staking import dispute_slash_enqueue

C = ConsumerDispute.Status
S = Job.Status
DISPUTABLE = (S.COMPLETED, S.SETTLED)
MIN_REASON, MAX_REASON = 10, 2000


def consumer_dispute_open(*, job: Job, actor, reason: str) -> ConsumerDispute:
    """The job's owner disputes its finished work, saying why."""
    member = getattr(actor, "membership", None)
    if member is None or member.organization_id != job.owner_id:
        raise PermissionDenied("Only the job's organization can dispute it.")
    text = clean_text(reason)
    if len(text) < MIN_REASON:
        raise MarketError(f"Say what went wrong (at least {MIN_REASON} characters).", field="reason")
    if len(text) > MAX_REASON:
        raise MarketError(f"The reason is at most {MAX_REASON} characters.", field="reason")
    with transaction.atomic():
        current = Job.objects.select_for_update().get(pk=job.pk)
        if current.status not in DISPUTABLE:
            raise Conflict(f"Job #{job.pk} is {current.get_status_display().lower()}; only a completed job "
                           "can be disputed.", code="not_disputable")
        if ConsumerDispute.objects.filter(job=job, status=C.OPEN).exists():
            raise Conflict("This job has an open dispute already; staff are looking at it.",
                           code="dispute_open")
        try:
            with transaction.atomic():
                dispute = ConsumerDispute.objects.create(job=job, organization_id=job.owner_id,
                                                         opened_by=actor, reason=text)
        except IntegrityError:  # a second request that raced this one
            raise Conflict("This job has an open dispute already; staff are looking at it.",
                           code="dispute_open") from None
        audit.audit_record(actor=actor, action="consumer_dispute.open", obj=job, data={"dispute": dispute.pk},
                           message=f"{actor.get_username()} disputed job #{job.pk}: {text[:300]}")
        job_states.note(job_id=job.pk, reason="consumer_dispute_opened", actor=actor,
                        message=f"Dispute #{dispute.pk} opened by {actor.get_username()}; staff will "
                                "review it.")
    return dispute


def _locked_open(dispute: ConsumerDispute) -> ConsumerDispute:
    locked = ConsumerDispute.objects.select_for_update().select_related("job").get(pk=dispute.pk)
    if locked.status != C.OPEN:
        raise Conflict(f"Dispute #{locked.pk} is {locked.get_status_display().lower()} already.")
    return locked


def _close(d: ConsumerDispute, *, status: str, actor, note: str, what: str) -> ConsumerDispute:
    d.status, d.resolved_by, d.resolved_at = status, actor, timezone.now()
    d.resolution = clean_text(note)[:2000]
    d.save(update_fields=["status", "resolved_by", "resolved_at", "resolution", "refund_amount", "refund_tx"])
    audit.audit_record(actor=actor, action=f"consumer_dispute.{status}", obj=d.job,
                       data={"dispute": d.pk, "refund_tx": d.refund_tx,
                             "refund_amount": str(d.refund_amount) if d.refund_amount is not None else None},
                       message=f"Dispute #{d.pk} of job #{d.job_id}: {what}. {d.resolution}".strip())
    said = f" Staff's note: {d.resolution}" if d.resolution else ""
    job_states.note(job_id=d.job_id, reason=f"consumer_dispute_{status}", actor=actor,
                    message=f"Dispute #{d.pk}: {what}.{said}")
    return d


def consumer_dispute_reject(*, dispute: ConsumerDispute, actor, note: str = "") -> ConsumerDispute:
    with transaction.atomic():
        d = _locked_open(dispute)
        return _close(d, status=C.REJECTED, actor=actor, note=note, what="rejected, nothing is refunded")


def consumer_dispute_refund(*, dispute: ConsumerDispute, actor, note: str = "") -> ConsumerDispute:
    """Refund the consumer (see the module's note). Idempotent through the dispute's row."""
    with transaction.atomic():
        d = _locked_open(dispute)
        escrow = Escrow.objects.filter(job_id=d.job_id).first()
        if escrow is not None and escrow.status == Escrow.Status.FUNDED:
            d.refund_tx = escrow_force_refund(job=d.job, actor=actor)
            what = (f"the whole escrow ({tusd(escrow.amount)}) is refunded on chain "
                    f"(transaction {d.refund_tx})")
            return _close(d, status=C.REFUNDED, actor=actor, note=note, what=what)
        settlement = Settlement.objects.filter(job_id=d.job_id, status=Settlement.Status.SETTLED).first()
        if escrow is None or settlement is None or settlement.charged <= 0:
            raise Conflict("Nothing was charged for this job: there is nothing to refund. Reject the dispute "
                           "instead.", code="nothing_to_refund")
        if not is_dev_chain():
            raise Conflict(f"The settlement token cannot be minted here: pay {tusd(settlement.charged)} to "
                           f"{escrow.consumer_address} from the treasury, then reject this dispute with "
                           "a note that says so.", code="not_dev_chain")
        tx = sender.send(key=operator_key(), purpose="refund", call=token_contract().functions.mint(
            escrow.consumer_address, to_units(settlement.charged)))
        d.refund_tx, d.refund_amount = tx.tx_hash, settlement.charged
        what = (f"{tusd(settlement.charged)}, what was charged, is paid back to {escrow.consumer_address} "
                f"(minted on the development chain, transaction {tx.tx_hash})")
        return _close(d, status=C.REFUNDED, actor=actor, note=note, what=what)


def consumer_dispute_slash(*, dispute: ConsumerDispute, actor, note: str = "") -> ConsumerDispute:
    """Staff hold the providers of the job's last attempt responsible: one attributed
    Dispute each, slashed by the staking service on the chain queue."""
    with transaction.atomic():
        d = _locked_open(dispute)
        attempts = Assignment.objects.filter(job_id=d.job_id).order_by("-attempt")
        attempt = attempts.values_list("attempt", flat=True).first()
        if attempt is None:
            raise Conflict("No machine ran this job: there is nobody to slash.", code="nothing_to_slash")
        created: list[Dispute] = []
        for a in (Assignment.objects.filter(job_id=d.job_id, attempt=attempt).select_related("node")
                  .order_by("node__provider_id", "node_rank")):
            if any(x.provider_id == a.node.provider_id for x in created):
                continue
            slash, _ = Dispute.objects.get_or_create(
                assignment=a, reason=Dispute.Reason.CONSUMER_CLAIM,
                defaults={"job_id": d.job_id, "provider_id": a.node.provider_id, "attributed": True,
                          "detail": f"Consumer dispute #{d.pk}, upheld by {actor.get_username()}: "
                                    f"{d.reason[:1500]}"})
            created.append(slash)
        for slash in created:
            transaction.on_commit(partial(dispute_slash_enqueue, dispute=slash))
        names = ", ".join(sorted({s.provider.name for s in created}))
        return _close(d, status=C.SLASHED, actor=actor, note=note,
                      what=f"upheld against {names}: their stake is slashed (dispute"
                           f"{'s' if len(created) > 1 else ''} {', '.join(f'#{s.pk}' for s in created)})")
