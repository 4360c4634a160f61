"""Paying for jobs: settlement in batches, and the refunds staff send. Money moves only on
the chain; every step here is idempotent (a retried call finds the work done, and the
contract refuses a second settlement).

Flow: the escrow is funded (services/funding.py) → the indexer sees `JobFunded` →
`escrow_events.escrow_funded` checks it against the terms and starts matching. When the job
ends, `settlements_prepare` meters it (selectors/metering.py: the one metering for the
settlement and every page); `settlement_batch_send` pays every pending job in one
`settleBatch`; the indexer sees `JobSettled` → `escrow_events.escrow_closed` settles the job.
"""

from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import job_states, task_names
from ..chain import sender
from ..chain.deploy import escrow_contract, is_dev_chain, operator_key, token_contract
from ..errors import Conflict
from ..models import ChainTransaction, Escrow, Job, Organization, Payout, Settlement
from ..money import round_down, to_units, tusd
from ..selectors.metering import job_statement
from . import audit, enqueue
from .jobs import job_cancel
from .wallets import payout_address

S = Job.Status
E = Escrow.Status
# Jobs that pay (or refund) once they stop: they may have run, and their escrow is funded.
SETTLE_FROM = (S.COMPLETED, S.CANCELLED, S.FAILED)


def escrow_force_refund(*, job: Job, actor=None) -> str:
    """Admin: return a funded, unsettled escrow to the consumer (operatorRefund)."""
    escrow = Escrow.objects.filter(job=job).first()
    if escrow is None or escrow.status != E.FUNDED:
        raise Conflict("Only a funded escrow that is not settled can be refunded.")
    tx = sender.send(key=operator_key(), purpose="refund",
                     call=escrow_contract().functions.operatorRefund(bytes.fromhex(escrow.key[2:])))
    audit.audit_record(actor=actor, action="escrow.force_refund", obj=job, data={"tx": tx.tx_hash},
                       message=f"Forced a refund of job {job.pk}'s escrow.")
    job_states.note(job_id=job.pk, reason="refund_sent", actor=actor,
                    message=f"An administrator refunded the escrow: transaction {tx.tx_hash}.")
    enqueue.enqueue(task_names.CHAIN_SYNC, countdown=0.2)
    return tx.tx_hash


def escrow_lost_refund(*, job: Job, actor=None) -> str:
    """Staff: make the consumer of an escrow whose chain is gone whole. On a development
    chain the deposit is minted again to the address that funded it (the operator mints
    tUSD); the escrow is refunded and the job follows. Idempotent: a retry returns the
    refund already sent. A real chain's token cannot be minted: refused with what to do."""
    with transaction.atomic():
        escrow = Escrow.objects.select_for_update().filter(job=job).first()
        if escrow is not None and escrow.status == E.REFUNDED and escrow.lost_reason:
            return escrow.close_tx
        if escrow is None or escrow.status != E.CHAIN_LOST:
            raise Conflict("Only an escrow whose chain is gone is refunded this way.")
        if settings.CHAIN_TOKEN_ADDRESS or not is_dev_chain():
            raise Conflict(f"The settlement token cannot be minted here: pay {tusd(escrow.amount)} to "
                           f"{escrow.consumer_address} from the treasury, and record it in the job's notes.",
                           code="not_dev_chain")
        tx = sender.send(key=operator_key(), purpose="refund", call=token_contract().functions.mint(
            escrow.consumer_address, to_units(escrow.amount)))
        escrow.status, escrow.close_tx, escrow.closed_at = E.REFUNDED, tx.tx_hash, timezone.now()
        escrow.save(update_fields=["status", "close_tx", "closed_at"])
        # Nothing was paid from the lost deposit: its statement must not show payouts.
        Settlement.objects.filter(job=job).exclude(status=Settlement.Status.SETTLED).delete()
        audit.audit_record(actor=actor, action="escrow.lost_refund", obj=job, data={"tx": tx.tx_hash},
                           message=f"Refunded job {job.pk}'s lost escrow: minted {tusd(escrow.amount)}.")
        text = (f"An administrator refunded the escrow lost with its chain: {tusd(escrow.amount)} "
                f"minted to {escrow.consumer_address} on the current development chain "
                f"(transaction {tx.tx_hash}).")
        current = Job.objects.get(pk=job.pk)
        if current.status in S.ACTIVE or current.status == S.SUBMITTED:
            current = job_cancel(job=current, actor=actor, reason="escrow_refunded",
                                 message="The escrow's chain is gone and its deposit was refunded; "
                                         "the job stops.")
        if job_states.can_transition(current.status, S.REFUNDED):
            job_states.transition(job_id=job.pk, to=S.REFUNDED, reason="escrow_refunded", actor=actor,
                                  message=text)
        else:  # completed work: the status stays, the timeline says what happened
            job_states.note(job_id=job.pk, reason="escrow_refunded", actor=actor, message=text)
        enqueue.enqueue(task_names.CHAIN_SYNC, countdown=0.2)
    return tx.tx_hash


def settlement_prepare(*, job: Job) -> Settlement | None:
    """Meter a stopped, funded job once: the statement, each provider's payout after the
    platform fee, and the rest back to the consumer. Capped by the escrow."""
    if job.status not in SETTLE_FROM:
        return None
    with transaction.atomic():
        # Locked: another worker's pass metering the same job waits, then finds this statement.
        escrow = Escrow.objects.select_for_update().filter(job=job, status=E.FUNDED).first()
        if escrow is None:
            return None
        existing = Settlement.objects.filter(job=job).first()
        if existing is not None:
            return existing
        lines, total = job_statement(job)
        charged = min(total, escrow.amount)
        scale = (charged / total) if total > 0 else Decimal(0)
        fee_rate = Decimal(settings.PLATFORM_FEE_BPS) / Decimal(10_000)
        per_provider: dict[int, Decimal] = {}
        for line in lines:
            p = line["provider"]
            per_provider[p] = per_provider.get(p, Decimal(0)) + Decimal(line["amount"])
        payouts = {p: round_down(v * scale * (1 - fee_rate)) for p, v in per_provider.items() if v > 0}
        fee = round_down(charged - sum(payouts.values(), Decimal(0)))
        settlement = Settlement.objects.create(job=job, charged=round_down(charged), fee=fee,
                                               refunded=round_down(escrow.amount - charged), statement=lines)
        for provider_id, amount in payouts.items():
            org = Organization.objects.get(pk=provider_id)
            Payout.objects.create(settlement=settlement, provider=org, amount=amount,
                                  address=payout_address(org) or "")
    return settlement


def settlements_prepare() -> int:
    """Every stopped, funded job without a statement gets one (the periodic pass)."""
    jobs = Job.objects.filter(status__in=SETTLE_FROM, escrow__status=E.FUNDED, settlement__isnull=True)
    return sum(settlement_prepare(job=job) is not None for job in jobs[:1000])


def settlement_batch_send(*, limit: int | None = None) -> str | None:
    """Pay every pending settlement in one settleBatch transaction. Each settlement is taken
    with a row lock and marked submitted in the same transaction that stores the signed
    transaction, so two workers never put a job into two batches; the contract skips a job
    that is already closed, so even a replayed batch cannot pay twice."""
    limit = limit or settings.SETTLEMENT_BATCH_MAX
    with transaction.atomic():
        pending = list(Settlement.objects.select_for_update(skip_locked=True, of=("self",))
                       .filter(status=Settlement.Status.PENDING, job__escrow__status=E.FUNDED)
                       .select_related("job__escrow").prefetch_related("payouts").order_by("id")[:limit])
        ready: list[Settlement] = []
        waiting: list[Settlement] = []
        for s in pending:
            (waiting if any(not p.address for p in s.payouts.all()) else ready).append(s)
        for s in waiting:
            _missing_payout_address(s)
        if not ready:
            return None
        batch = [(bytes.fromhex(s.job.escrow.key[2:]), [p.address for p in s.payouts.all()],
                  [to_units(p.amount) for p in s.payouts.all()], to_units(s.fee)) for s in ready]
        tx = sender.send(key=operator_key(), purpose="settle",
                         call=escrow_contract().functions.settleBatch(batch))
        Settlement.objects.filter(pk__in=[s.pk for s in ready]).update(
            status=Settlement.Status.SUBMITTED, transaction=tx)
    return tx.tx_hash


def _missing_payout_address(s: Settlement) -> None:
    """A provider without a payout wallet: use one set since, or say (once) why the job waits."""
    for p in s.payouts.all():
        if p.address:
            continue
        if address := payout_address(p.provider):
            Payout.objects.filter(pk=p.pk).update(address=address)
        elif not s.job.events.filter(reason="payout_wallet_missing").exists():
            job_states.note(job_id=s.job_id, reason="payout_wallet_missing",
                            message=f"Settlement waits for {p.provider.name} to link a payout wallet.")


def settlements_retry_reverted() -> int:
    """A batch that reverted (the contract refused it) goes back to pending, once checked."""
    reverted = Settlement.objects.filter(status=Settlement.Status.SUBMITTED,
                                         transaction__status=ChainTransaction.Status.REVERTED)
    return reverted.update(status=Settlement.Status.PENDING, transaction=None)
