"""Funding a job's escrow: the terms the operator signs for one of the owner's wallets
(`chain.deploy.fund_terms_signature`: the job's key, that wallet, the budget, the reclaim
deadline; the contract takes nothing else), the calls a browser wallet makes, and `job_fund`
from a custodial wallet (a top-up when the budget was raised). What the chain then says is
applied by services/escrow_events.py.
"""

import secrets
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from eth_utils import is_address, to_checksum_address

from .. import job_states, task_names
from ..chain import sender
from ..chain.client import chain_id, unavailable
from ..chain.deploy import escrow_contract, fund_terms_signature, token_contract
from ..errors import Conflict, MarketError
from ..models import ChainTransaction, Escrow, Job, Organization, Wallet
from ..money import round_down, to_units, tusd
from . import enqueue
from .wallets import custodial_key, custodial_wallet

W = Wallet.Kind
S = Job.Status
E = Escrow.Status
FUND_GAS = 150_000  # measured: fund costs 101,416 with its signed terms (bench/gas.py)


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
    """The stored transaction was refused on chain (a funding to send again)."""
    stored = ChainTransaction.objects.filter(tx_hash=tx_hash, lost_reason="").first()
    return stored is not None and sender.check(stored).status == ChainTransaction.Status.REVERTED
