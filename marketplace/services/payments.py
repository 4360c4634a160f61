"""Paying for jobs: the escrow each job is funded into, metering of the work that survived,
and settlement in batches. Money moves only on the chain; every step here is idempotent
(a retried call finds the work done, and the contract refuses a second settlement).

Flow: `job_fund` (custodial wallet) or the browser funds the escrow, on terms the operator
signs for one of the owner's wallets (`chain.deploy.fund_terms_signature`: the job's key,
that wallet, the budget, the reclaim deadline; the contract takes nothing else) → the
indexer sees `JobFunded` → `escrow_funded` checks it against the terms and starts
matching. When the job ends, `settlements_prepare` meters it; `settlement_batch_send` pays
every pending job in one `settleBatch`; the indexer sees `JobSettled` → `escrow_closed`
settles the job.
"""

import logging
import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from eth_utils import is_address, to_checksum_address

from .. import job_states, task_names
from ..chain import sender
from ..chain.client import chain_id, unavailable
from ..chain.deploy import escrow_contract, fund_terms_signature, is_dev_chain, operator_key, token_contract
from ..errors import Conflict, MarketError
from ..models import Assignment, ChainTransaction, Escrow, Job, Organization, Payout, Settlement, Wallet
from ..money import from_units, round_down, to_units, tusd
from ..selectors.metering import job_statement
from . import audit, enqueue
from .budget import job_resume_if_covered
from .jobs import job_cancel
from .wallets import custodial_key, custodial_wallet, payout_address

W = Wallet.Kind

log = logging.getLogger(__name__)
S = Job.Status
A = Assignment.Status
E = Escrow.Status
# Jobs that pay (or refund) once they stop: they may have run, and their escrow is funded.
SETTLE_FROM = (S.COMPLETED, S.CANCELLED, S.FAILED)
FUND_GAS = 150_000  # measured: fund costs 101,416 with its signed terms (bench/gas.py)


# --- the escrow ---------------------------------------------------------------------
def escrow_of(job: Job) -> Escrow:
    """The job's escrow record; its chain id is random (unpredictable: nobody can fund a
    job id first to block the consumer's own funding)."""
    escrow, _ = Escrow.objects.get_or_create(job=job, defaults={"key": "0x" + secrets.token_hex(32)})
    return escrow


def reclaim_deadline(job: Job) -> datetime:
    """When the consumer may take an unsettled deposit back without the platform."""
    return job.deadline + timedelta(seconds=settings.ESCROW_RECLAIM_AFTER_S)


def fund_deadline(job: Job) -> int:
    """The escrow's deadline in the terms the platform signs (unix seconds): the same for
    every signature of one job, and the only one `escrow_funded` accepts."""
    return int(reclaim_deadline(job).timestamp())


def funding_wallet(job: Job, address: str | None) -> str:
    """The owner's wallet that funds `job` (checksummed): `address` when it is one of the
    owner's wallets (linked, or custodial), or else the owner's only linked wallet. The
    platform signs terms for no other address."""
    wallets = Wallet.objects.filter(organization=job.owner)
    if address:
        if not is_address(address):
            raise MarketError(f"{address!r} is not an address.", field="address")
        address = to_checksum_address(address)
        if not wallets.filter(address=address).exists():
            raise MarketError(f"{address} is not one of {job.owner.name}'s wallets; link it first "
                              "(Sign-In with Ethereum).", field="address", code="not_your_wallet")
        return address
    linked = list(wallets.filter(kind=W.EXTERNAL).values_list("address", flat=True))
    if len(linked) != 1:
        raise MarketError("Say which of your linked wallets funds the job (`address`)." if linked else
                          "Link a wallet first (Sign-In with Ethereum); the escrow is funded from it.",
                          field="address", code="wallet_required")
    return linked[0]


def fund_calls(job: Job, *, address: str | None = None) -> dict:
    """What a wallet in the browser sends: approve the escrow, then fund (the amount is the
    job's budget, in base units) with the operator's signature of the terms for that wallet
    (`address`, one of the owner's wallets: only it can send this fund call). An escrow
    funded with less than the budget gets a top-up of the difference in place of the fund
    call (`kind` says which), and only from the wallet that funded it."""
    record = escrow_of(job)
    if not address and record.status == E.FUNDED:
        address = record.consumer_address  # a top-up comes from the wallet that funded it
    consumer = funding_wallet(job, address)
    escrow, token = escrow_contract(), token_contract()
    key = bytes.fromhex(record.key[2:])
    deadline = fund_deadline(job)
    signature = ""
    if record.status == E.FUNDED and record.amount < job.budget:
        if record.consumer_address != consumer:
            raise Conflict(f"The escrow was funded from {record.consumer_address}; only that wallet can "
                           "top it up.", code="not_the_funding_wallet")
        due, kind = job.budget - record.amount, "top_up"
        call = escrow.encode_abi("topUp", args=[key, to_units(due)])
    else:
        due, kind = job.budget, "fund"
        signature = fund_terms_signature(job_key=record.key, consumer=consumer, amount=to_units(due),
                                         deadline=deadline)
        call = escrow.encode_abi("fund", args=[key, to_units(due), deadline, bytes.fromhex(signature[2:])])
    amount = to_units(due)
    return {
        "chain_id": chain_id(), "token": token.address, "escrow": escrow.address, "job_key": record.key,
        "kind": kind, "consumer": consumer, "amount": str(due), "amount_units": str(amount),
        "deadline": deadline, "signature": signature,
        "approve": {"to": token.address,
                    "data": token.encode_abi("approve", args=[escrow.address, amount])},
        "fund": {"to": escrow.address, "data": call},
    }


def top_up_due(job: Job) -> bool:
    """A running (or paused) job whose escrow holds less than its raised budget."""
    escrow = Escrow.objects.filter(job=job, status=E.FUNDED).first()
    return escrow is not None and job.status in S.ACTIVE and escrow.amount < job.budget


def job_fund(*, job: Job, actor=None, amount: Decimal | None = None) -> Escrow:
    """Fund the job's escrow with its budget from the organization's custodial (development)
    wallet: approve, then fund; a funded escrow below a raised budget is topped up. Idempotent:
    a job whose funding (or top-up) is under way or done is returned as it is."""
    if not settings.ESCROW_ENABLED:
        raise Conflict("Escrow is not enabled on this platform; jobs run without funding.")
    if amount is not None and round_down(amount) != job.budget:
        raise MarketError(f"The escrow must hold the job's budget, {tusd(job.budget)} "
                          f"(not {amount} tUSD).", field="amount", code="wrong_amount")
    with transaction.atomic():
        escrow = Escrow.objects.select_for_update().filter(pk=escrow_of(job).pk).get()
        if escrow.status == E.FUNDING and _reverted(escrow.fund_tx):
            escrow.status = E.UNFUNDED  # that funding failed on chain (e.g. while paused): fund again
        if escrow.status == E.FUNDED:
            return _top_up(job=Job.objects.get(pk=job.pk), escrow=escrow, actor=actor)
        if escrow.status != E.UNFUNDED:
            return escrow
        if Job.objects.get(pk=job.pk).status != S.SUBMITTED:
            raise Conflict(f"Job #{job.pk} is {job.get_status_display().lower()}; only a submitted job "
                           "is funded.")
        wallet, key, approving = _custodial_approve(job.owner, job.budget)
        units, deadline = to_units(job.budget), fund_deadline(job)
        signature = fund_terms_signature(job_key=escrow.key, consumer=wallet.address, amount=units,
                                         deadline=deadline)
        # Both go out after this transaction commits, in order; the fund's gas cannot be
        # estimated before the approval is mined, so it gets a fixed limit then.
        tx = sender.send(key=key, purpose="fund", gas=FUND_GAS if approving else None,
                         call=escrow_contract().functions.fund(
                             bytes.fromhex(escrow.key[2:]), units, deadline, bytes.fromhex(signature[2:])))
        escrow.status, escrow.fund_tx = E.FUNDING, tx.tx_hash
        escrow.save(update_fields=["status", "fund_tx"])
        job_states.note(job_id=job.pk, reason="funding_sent", actor=actor,
                        message=f"Funding {tusd(job.budget)} from {wallet.address}: "
                                f"transaction {tx.tx_hash}.")
        enqueue.enqueue(task_names.CHAIN_SYNC, countdown=0.2)
    return escrow


def _custodial_approve(owner: Organization, amount: Decimal):
    """The owner's development wallet and key, once it is known to hold `amount`, with an
    approval of the escrow for it queued when the allowance is short (`approving`: the next
    call's gas cannot be estimated before that is mined). The chain's reads raise ChainError
    (503) when the node does not answer, never a 500."""
    wallet = custodial_wallet(owner)
    key = custodial_key(wallet)
    token, escrow = token_contract(), escrow_contract()
    units = to_units(amount)
    try:
        balance = token.functions.balanceOf(wallet.address).call()
        allowance = token.functions.allowance(wallet.address, escrow.address).call()
    except Exception as exc:  # connection refused, timeouts, a node answering garbage
        raise unavailable(exc) from exc
    if balance < units:
        raise Conflict(f"The wallet {wallet.address} holds less than {tusd(amount)}.",
                       code="insufficient_funds")
    approving = allowance < units
    if approving:
        sender.send(key=key, purpose="approve", call=token.functions.approve(escrow.address, units))
    return wallet, key, approving


def _top_up(*, job: Job, escrow: Escrow, actor=None) -> Escrow:
    """A funded escrow holding less than the job's (raised) budget gets the difference from
    the custodial wallet. Idempotent: while a top-up is in flight (sent, not yet seen by the
    indexer, not reverted) a retry sends nothing."""
    if escrow.amount >= job.budget or job.status not in S.ACTIVE:
        return escrow
    if (escrow.top_up_tx and escrow.top_up_total is not None and escrow.top_up_total > escrow.amount
            and not _reverted(escrow.top_up_tx)):
        return escrow
    wallet = custodial_wallet(job.owner)
    if escrow.consumer_address != wallet.address:  # only the bound consumer tops up
        raise Conflict(f"The escrow was funded from {escrow.consumer_address}; top it up from that "
                       "wallet (fund-calls).", code="not_the_funding_wallet")
    due = job.budget - escrow.amount
    wallet, key, approving = _custodial_approve(job.owner, due)
    tx = sender.send(key=key, purpose="top_up", gas=FUND_GAS if approving else None,
                     call=escrow_contract().functions.topUp(bytes.fromhex(escrow.key[2:]), to_units(due)))
    escrow.top_up_tx, escrow.top_up_total = tx.tx_hash, job.budget
    escrow.save(update_fields=["top_up_tx", "top_up_total"])
    job_states.note(job_id=job.pk, reason="top_up_sent", actor=actor,
                    message=f"Topping up the escrow with {tusd(due)} from {wallet.address}: "
                            f"transaction {tx.tx_hash}.")
    enqueue.enqueue(task_names.CHAIN_SYNC, countdown=0.2)
    return escrow


def _reverted(tx_hash: str) -> bool:
    stored = ChainTransaction.objects.filter(tx_hash=tx_hash, lost_reason="").first()
    return stored is not None and sender.check(stored).status == ChainTransaction.Status.REVERTED


def escrow_funded(*, key: str, consumer: str, amount: int, deadline: int, tx_hash: str) -> None:
    """The chain says a job's escrow was funded: start the job if the deposit covers it.
    Only a funding on the job's terms counts: from one of the owner's wallets, with the
    deadline the platform signs. Anything else is foreign (`escrow_foreign_funding`)."""
    escrow = Escrow.objects.select_for_update().select_related("job").filter(key=key).first()
    if escrow is None:
        log.warning("JobFunded for unknown escrow %s (tx %s)", key, tx_hash)
        return
    if escrow.status in (E.FUNDED, E.SETTLED, E.REFUNDED):
        return
    job = escrow.job
    if not Wallet.objects.filter(organization=job.owner, address=consumer).exists():
        why = f"{consumer} is not one of {job.owner.name}'s wallets"
    elif deadline != fund_deadline(job):
        why = f"its deadline {deadline} is not the job's {fund_deadline(job)}"
    elif amount <= 0:
        why = "it deposited nothing"
    else:
        why = ""
    if why:
        escrow_foreign_funding(escrow=escrow, consumer=consumer, amount=amount, deadline=deadline,
                               tx_hash=tx_hash, why=why)
        return
    escrow.status, escrow.consumer_address, escrow.amount = E.FUNDED, consumer, from_units(amount)
    escrow.deadline, escrow.fund_tx = datetime.fromtimestamp(deadline, tz=UTC), tx_hash
    escrow.funded_at = timezone.now()
    escrow.save()
    _start_if_covered(escrow)


def escrow_foreign_funding(*, escrow: Escrow, consumer: str, amount: int, deadline: int, tx_hash: str,
                           why: str) -> None:
    """A JobFunded that is not the job's own: never the escrow's consumer, never a top-up
    target. It is recorded for staff (audit trail, the job's timeline) and the job gets a
    fresh key, so that its owner funds on its own terms (the contract refuses a second
    funding of a key). The contract only accepts operator-signed terms, so this means terms
    signed for a wallet the owner no longer holds, or an operator key to rotate."""
    old_key, escrow.key = escrow.key, "0x" + secrets.token_hex(32)
    reset = escrow.status == E.FUNDING  # the owner's funding in flight went to the old key
    if reset:
        escrow.status = E.UNFUNDED
    escrow.save(update_fields=["key", "status"])
    data = {"key": old_key, "consumer": consumer, "amount": str(from_units(amount)), "deadline": deadline,
            "tx": tx_hash, "why": why}
    log.error("foreign JobFunded for job %s: %s (tx %s)", escrow.job_id, why, tx_hash)
    audit.audit_record(actor=None, action="escrow.foreign_funding", obj=escrow.job, data=data,
                       message=f"Ignored a funding of job {escrow.job_id}'s escrow key {old_key} by "
                               f"{consumer} ({tusd(from_units(amount))}, transaction {tx_hash}): {why}.")
    job_states.note(job_id=escrow.job_id, reason="escrow_foreign", data=data,
                    message=f"A funding by {consumer} ({tusd(from_units(amount))}, transaction {tx_hash}) "
                            f"was not this job's ({why}) and is ignored; staff are told. "
                            + ("Fund the job again. " if reset else "") + "The job has a new escrow key.")


def escrow_topped_up(*, key: str, total: int) -> None:
    escrow = Escrow.objects.select_for_update().select_related("job").filter(key=key).first()
    if escrow is None or escrow.status != E.FUNDED:
        return
    escrow.amount = from_units(total)
    escrow.save(update_fields=["amount"])
    _start_if_covered(escrow)
    if escrow.job.status == S.PAUSED:
        job_resume_if_covered(job_id=escrow.job_id)


def _start_if_covered(escrow: Escrow) -> None:
    job = escrow.job
    if job.status != S.SUBMITTED:
        return
    if escrow.amount < job.budget:
        job_states.note(job_id=job.pk, reason="underfunded",
                        message=f"The escrow holds {tusd(escrow.amount)} of the {tusd(job.budget)} "
                                "budget; top it up to start the job.")
        return
    job_states.transition(job_id=job.pk, to=S.FUNDED, reason="escrow_funded",
                          message=f"Escrow funded on chain with {tusd(escrow.amount)} "
                                  f"(transaction {escrow.fund_tx}).")
    enqueue.match_job(job.pk)


def escrow_closed(*, key: str, refunded: bool, paid: int, fee: int, returned: int, tx_hash: str) -> None:
    """The chain says a job's escrow was settled or refunded: the job follows."""
    escrow = Escrow.objects.select_for_update().select_related("job").filter(key=key).first()
    if escrow is None or escrow.status in (E.SETTLED, E.REFUNDED):
        return
    job = escrow.job
    escrow.status = E.REFUNDED if refunded or (paid == 0 and fee == 0) else E.SETTLED
    escrow.close_tx, escrow.closed_at = tx_hash, timezone.now()
    escrow.save(update_fields=["status", "close_tx", "closed_at"])
    if refunded:
        # The whole deposit went back: a statement still waiting for a batch (or skipped by
        # one) paid nobody, and must not show its payouts as paid.
        Settlement.objects.filter(job=job).exclude(status=Settlement.Status.SETTLED).delete()
    else:
        Settlement.objects.filter(job=job).exclude(status=Settlement.Status.SETTLED).update(
            status=Settlement.Status.SETTLED, settled_at=timezone.now())
    if refunded and job.status in (S.ACTIVE - {S.VERIFYING}) | {S.SUBMITTED}:
        job = job_cancel(job=job, reason="escrow_refunded",
                         message="The escrow was refunded on chain; the job stops.")
    to = S.REFUNDED if escrow.status == E.REFUNDED else S.SETTLED
    text = (f"Refunded {tusd(from_units(returned))} to the consumer" if to == S.REFUNDED else
            f"Settled on chain: {tusd(from_units(paid))} to providers, {tusd(from_units(fee))} "
            f"platform fee, {tusd(from_units(returned))} back to the consumer")
    if job_states.can_transition(Job.objects.get(pk=job.pk).status, to):
        job_states.transition(job_id=job.pk, to=to, reason="escrow_" + to, message=f"{text} ({tx_hash}).")
    else:  # e.g. completed work reclaimed after the deadline: the status stays, the timeline says why
        job_states.note(job_id=job.pk, reason="escrow_" + to, message=f"{text} ({tx_hash}).")


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


# --- a chain that is gone ----------------------------------------------------------
def on_chain_gone(sender, *, reason: str, **kwargs) -> None:
    """chain.deploy.chain_gone's receiver (apps.py)."""
    escrows_chain_lost(reason=reason)


def escrows_chain_lost(*, reason: str) -> int:
    """The chain that held the deposits is gone (`chain.deploy.chain_lost`): each funded,
    unsettled escrow is marked `chain_lost` with the reason and says so on its job's
    timeline, for staff to resolve (`escrow_lost_refund`); its statement, if any, waits
    again (the batch that carried it went to the lost chain, and no batch takes a lost
    escrow). A funding in flight is forgotten: the consumer funds again on the new chain.
    Idempotent: marked escrows are not marked again. Returns how many were marked."""
    marked = 0
    for escrow in (Escrow.objects.select_for_update().select_related("job")
                   .filter(status__in=(E.FUNDED, E.FUNDING)).order_by("pk")):
        if escrow.status == E.FUNDING:
            Escrow.objects.filter(pk=escrow.pk).update(status=E.UNFUNDED)
            job_states.note(job_id=escrow.job_id, reason="funding_lost", data={"reason": reason},
                            message=f"The funding transaction {escrow.fund_tx} went to a chain that is gone "
                                    f"({reason}); fund the job again.")
            continue
        Escrow.objects.filter(pk=escrow.pk).update(status=E.CHAIN_LOST, lost_reason=reason[:300])
        Settlement.objects.filter(job_id=escrow.job_id, status=Settlement.Status.SUBMITTED).update(
            status=Settlement.Status.PENDING, transaction=None)
        job_states.note(job_id=escrow.job_id, reason="chain_lost", data={"reason": reason},
                        message=f"The escrow's chain is gone: {reason}. Its {tusd(escrow.amount)} deposit "
                                f"(transaction {escrow.fund_tx}) was neither paid out nor refunded there; "
                                "staff will refund it.")
        marked += 1
    if marked:
        log.error("chain lost (%s): %d funded escrows marked chain_lost", reason, marked)
    return marked


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


def escrow_settlement_skipped(*, key: str, state: int, tx_hash: str) -> None:
    """The contract skipped a job in a settlement batch: the escrow was not funded on chain
    (0 no such escrow, 2 already settled, 3 refunded). Recorded on the statement and the
    timeline, once per transaction. An escrow the chain does not know while we hold it
    funded means its chain is not this one: it is marked chain_lost so that no batch
    carries it again."""
    escrow = Escrow.objects.select_for_update().select_related("job").filter(key=key).first()
    if escrow is None:
        log.warning("SettlementSkipped for unknown escrow %s (tx %s)", key, tx_hash)
        return
    if escrow.job.events.filter(reason="settlement_skipped", data__tx=tx_hash).exists():
        return
    names = {0: "unknown to the contract", 1: "funded", 2: "already settled", 3: "already refunded"}
    Settlement.objects.filter(job=escrow.job).exclude(status=Settlement.Status.SETTLED).update(
        status=Settlement.Status.SKIPPED, skipped_state=state)
    job_states.note(job_id=escrow.job_id, reason="settlement_skipped", data={"tx": tx_hash, "state": state},
                    message=f"The escrow contract skipped this job's settlement (transaction {tx_hash}): "
                            f"its escrow is {names.get(state, f'in state {state}')} on chain.")
    if state == 0 and escrow.status == E.FUNDED:
        reason = f"the settlement transaction {tx_hash} found no escrow for this job on the chain"
        escrow.status, escrow.lost_reason = E.CHAIN_LOST, reason
        escrow.save(update_fields=["status", "lost_reason"])
        job_states.note(job_id=escrow.job_id, reason="chain_lost", data={"reason": reason},
                        message=f"The chain does not hold this job's escrow ({reason}); its "
                                f"{tusd(escrow.amount)} deposit waits for staff to refund it.")


# --- metering: selectors/metering.py (one metering for settlement and every page) ----

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
