"""Provider stake and slashing (contracts/src/ProviderStake.sol).

Providers stake from their custodial (development) wallet: `stake_deposit`,
`stake_request_withdrawal`, then `stake_withdraw` once the delay has passed. Each takes a
`request_id`, so a retried request sends nothing new. The indexer hands every stake event to
`stake_event_seen`, which keeps `ProviderStake` rows and each offer's `provider_stake` in step
with the chain.

`dispute_slash` slashes the provider of an open, attributed Dispute: the disputed work's value ×
SLASH_FACTOR, capped at the stake, to the platform's treasury — never to an address the
consumer controls: a consumer who could collect slashes would profit from framing an honest
provider (the consumer is made whole otherwise: failed work is not charged). A dispute not
attributed to one node (services/attribution.attribute) is never slashed here; staff review
it. It is safe to retry: the `DisputeSlash` row is created with the transaction (a retry checks that
transaction instead of sending another), and the contract refuses a second slash for the
same dispute id.
"""

import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone
from eth_utils import keccak

from .. import job_states, task_names
from ..chain import indexer, sender
from ..chain.client import chain_id, w3
from ..chain.deploy import operator_key, stake_contract, token_contract, treasury_address
from ..errors import Conflict, MarketError, NotFound, PermissionDenied
from ..models import (
    ChainTransaction,
    Dispute,
    DisputeSlash,
    Escrow,
    Offer,
    Organization,
    ProviderStake,
    StakeEvent,
    StakeOperation,
    Wallet,
)
from ..money import MICRO, from_units, to_units, tusd
from . import audit, enqueue
from .wallets import custodial_key, custodial_wallet

log = logging.getLogger(__name__)
T = ChainTransaction.Status
D = Dispute.Status
Op = StakeOperation.Kind
STAKE_GAS = 150_000  # an approval goes first, unmined: no estimate (bench/gas.py: stake ~60k)


# --- reading ------------------------------------------------------------------------------
def provider_stake_total(organization_id: int) -> Decimal:
    """What the provider has at stake (active + pending withdrawal), as indexed."""
    row = ProviderStake.objects.filter(organization_id=organization_id).aggregate(
        staked=Sum("staked"), pending=Sum("pending"))
    return (row["staked"] or Decimal(0)) + (row["pending"] or Decimal(0))


def _on_chain(address: str) -> tuple[int, int, int]:
    """(staked, pending, unlockAt) of `address` on the stake contract, base units."""
    staked, pending, unlock = stake_contract().functions.stakes(address).call()
    return staked, pending, unlock


# --- a provider's own stake (custodial wallet) -----------------------------------------------
def _operation(*, organization: Organization, request_id: uuid.UUID | str | None, kind: str, send):
    """Run `send(wallet, key)` once per request id; a repeat returns the first operation."""
    if organization.is_suspended:
        raise PermissionDenied("Your organization is suspended; contact support.")
    if not organization.is_provider:
        raise PermissionDenied("Only provider organizations stake.")
    try:
        request_id = uuid.UUID(str(request_id)) if request_id else uuid.uuid4()
    except ValueError:
        raise MarketError("request_id must be a UUID.", field="request_id") from None
    try:
        with transaction.atomic():
            wallet = custodial_wallet(organization)
            # One operation at a time per wallet: the chain reads below stay true until sent.
            Wallet.objects.select_for_update().filter(pk=wallet.pk).get()
            existing = StakeOperation.objects.filter(request_id=request_id).first()
            if existing is not None:
                if existing.organization_id != organization.pk:
                    raise Conflict("That request id belongs to another organization.")
                return existing
            amount, tx = send(wallet, custodial_key(wallet))
            op = StakeOperation.objects.create(organization=organization, request_id=request_id, kind=kind,
                                               amount=amount, address=wallet.address, transaction=tx)
            enqueue.enqueue(task_names.CHAIN_SYNC, countdown=0.2)
            return op
    except IntegrityError:  # the same request id raced us and won: its operation stands
        existing = StakeOperation.objects.filter(request_id=request_id, organization=organization).first()
        if existing is None:
            raise
        return existing


def _positive(amount) -> Decimal:
    try:
        amount = Decimal(str(amount))
    except ArithmeticError:
        raise MarketError("Enter an amount in tUSD, such as 100 or 12.5.", field="amount") from None
    if not amount.is_finite() or amount <= 0:
        raise MarketError("The amount must be more than 0 tUSD.", field="amount")
    return amount


def stake_deposit(*, organization: Organization, amount, request_id=None, actor=None) -> StakeOperation:
    """Stake `amount` tUSD from the organization's custodial wallet (approve, then stake)."""
    amount = _positive(amount)
    units = to_units(amount)

    def send(wallet, key):
        token, stake = token_contract(), stake_contract()
        held = token.functions.balanceOf(wallet.address).call()
        if held < units:
            raise Conflict(f"The wallet {wallet.address} holds {tusd(from_units(held))}, less than "
                           f"{tusd(amount)}.", code="insufficient_funds")
        approving = token.functions.allowance(wallet.address, stake.address).call() < units
        if approving:
            sender.send(key=key, purpose="approve", call=token.functions.approve(stake.address, units))
        tx = sender.send(key=key, purpose="stake", gas=STAKE_GAS if approving else None,
                         call=stake.functions.stake(units))
        audit.audit_record(actor=actor, action="stake.deposit", obj=organization,
                           data={"amount": str(amount), "tx": tx.tx_hash},
                           message=f"Staking {tusd(amount)} from {wallet.address}.")
        return amount, tx

    return _operation(organization=organization, request_id=request_id, kind=Op.STAKE, send=send)


def stake_request_withdrawal(*, organization: Organization, amount, request_id=None,
                             actor=None) -> StakeOperation:
    """Move `amount` of the active stake to pending; it can be withdrawn after the delay."""
    amount = _positive(amount)
    units = to_units(amount)

    def send(wallet, key):
        staked, _, _ = _on_chain(wallet.address)
        if units > staked:
            raise MarketError(f"You have {tusd(from_units(staked))} staked; you cannot withdraw "
                              f"{tusd(amount)}.", field="amount", code="insufficient_stake")
        tx = sender.send(key=key, purpose="stake", call=stake_contract().functions.requestWithdrawal(units))
        audit.audit_record(actor=actor, action="stake.request_withdrawal", obj=organization,
                           data={"amount": str(amount), "tx": tx.tx_hash},
                           message=f"Requested the withdrawal of {tusd(amount)} of stake.")
        return amount, tx

    return _operation(organization=organization, request_id=request_id, kind=Op.REQUEST_WITHDRAWAL,
                      send=send)


def stake_withdraw(*, organization: Organization, request_id=None, actor=None) -> StakeOperation:
    """Withdraw the pending stake, once its delay has passed."""
    def send(wallet, key):
        _, pending, unlock = _on_chain(wallet.address)
        if pending == 0:
            raise Conflict("Nothing is pending withdrawal; request a withdrawal first.",
                           code="nothing_pending")
        now = w3().eth.get_block("latest")["timestamp"]
        if now < unlock:
            when = datetime.fromtimestamp(unlock, tz=UTC).isoformat(timespec="seconds")
            raise Conflict(f"The pending stake unlocks at {when}; withdraw it after that.",
                           code="withdrawal_locked")
        tx = sender.send(key=key, purpose="stake", call=stake_contract().functions.withdraw())
        audit.audit_record(actor=actor, action="stake.withdraw", obj=organization,
                           data={"amount": str(from_units(pending)), "tx": tx.tx_hash},
                           message="Withdrawing the pending stake.")
        return from_units(pending), tx

    return _operation(organization=organization, request_id=request_id, kind=Op.WITHDRAW, send=send)


# --- what the chain says (the indexer) -------------------------------------------------------
def stake_event_seen(*, name: str, args, tx_hash: str, log_index: int, block_number: int) -> None:
    """Apply one stake event once (a re-read range finds its StakeEvent and skips it)."""
    if StakeEvent.objects.filter(tx_hash=tx_hash, log_index=log_index).exists():
        return
    address = args["provider"]
    owner = Wallet.objects.filter(address=address).values_list("organization_id", flat=True).first()
    stake, _ = ProviderStake.objects.get_or_create(address=address, defaults={"organization_id": owner})
    stake = ProviderStake.objects.select_for_update().get(pk=stake.pk)
    if stake.organization_id is None and owner is not None:
        stake.organization_id = owner
    event = StakeEvent(stake=stake, tx_hash=tx_hash, log_index=log_index, block_number=block_number,
                       amount=from_units(args["amount"]))
    if name == "Staked":
        event.kind = StakeEvent.Kind.STAKED
        stake.staked = from_units(args["staked"])
    elif name == "WithdrawalRequested":
        event.kind = StakeEvent.Kind.WITHDRAWAL_REQUESTED
        stake.staked -= event.amount
        stake.pending = from_units(args["pending"])
        stake.unlock_at = datetime.fromtimestamp(args["unlockAt"], tz=UTC)
    elif name == "Withdrawn":
        event.kind = StakeEvent.Kind.WITHDRAWN
        stake.pending, stake.unlock_at = Decimal(0), None
    elif name == "Slashed":
        event.kind = StakeEvent.Kind.SLASHED
        event.recipient, event.reason_code = args["recipient"], args["reasonCode"]
        # As the contract takes it: the active stake first, then the pending.
        from_staked = min(event.amount, stake.staked)
        stake.staked -= from_staked
        stake.pending -= event.amount - from_staked
        stake.slashed_total += event.amount
        event.dispute = _dispute_slashed(key="0x" + bytes(args["disputeId"]).hex(), amount=event.amount,
                                         tx_hash=tx_hash)
    else:
        return
    stake.save()
    event.save()
    if stake.organization_id:
        _sync_offers(stake.organization_id)


def _sync_offers(organization_id: int) -> None:
    """The search table carries each provider's stake (MIN_STAKE_FOR_VERIFIED_TAGS)."""
    Offer.objects.filter(provider_id=organization_id).update(
        provider_stake=provider_stake_total(organization_id), updated_at=timezone.now())


def _dispute_slashed(*, key: str, amount: Decimal, tx_hash: str) -> Dispute | None:
    slash = DisputeSlash.objects.select_related("dispute").filter(key=key).first()
    if slash is None:
        log.warning("Slashed for unknown dispute id %s (tx %s)", key, tx_hash)
        return None
    dispute = slash.dispute
    # The chain is the truth: a slash that went out is recorded whatever the row said.
    if Dispute.objects.filter(pk=dispute.pk).exclude(status=D.SLASHED).update(
            status=D.SLASHED, slash_amount=amount, slash_tx=tx_hash, resolved_at=timezone.now()):
        job_states.note(job_id=dispute.job_id, reason="dispute_slashed",
                        message=f"Dispute #{dispute.pk}: {dispute.provider.name}'s stake was slashed by "
                                f"{tusd(amount)} to {slash.recipient} (transaction {tx_hash}).")
    return dispute


# --- disputes: slash or dismiss --------------------------------------------------------------
def dispute_key(dispute: Dispute) -> str:
    """The dispute's id on the chain: unique per job escrow (random) and dispute row, so a
    database reset cannot reuse one that an earlier chain saw slashed."""


    escrow_key = Escrow.objects.filter(job_id=dispute.job_id).values_list("key", flat=True).first() or ""
    return "0x" + keccak(text=f"computemesh dispute {chain_id()} {escrow_key} {dispute.pk}").hex()


def slash_policy_amount(dispute: Dispute) -> Decimal:
    """The disputed work's value (its GPU-hours at the locked price) × SLASH_FACTOR, at
    least SLASH_MIN; the caller caps it at the stake."""
    a = dispute.assignment
    if a.started_at is None:
        hours = Decimal(0)
    else:
        end = a.finished_at or timezone.now()
        hours = Decimal(max(0.0, (end - a.started_at).total_seconds())) / Decimal(3600)
    value = a.price_per_gpu_hour * a.gpus * hours
    return max(value * settings.SLASH_FACTOR, settings.SLASH_MIN).quantize(MICRO)


def _stake_address(provider: Organization) -> tuple[str | None, int]:
    """The provider's address with the most at stake on the chain, and that amount."""
    best, most = None, 0
    for address in Wallet.objects.filter(organization=provider).values_list("address", flat=True):
        staked, pending, _ = _on_chain(address)
        if staked + pending > most:
            best, most = address, staked + pending
    return best, most


def dispute_slash(*, dispute_id: int, actor=None) -> Dispute:
    """Slash the provider of an open dispute (see the module's note); returns the dispute,
    `slashed` once the chain has said so, still `open` (with the slash's note) when the
    provider has nothing at stake."""
    if not Dispute.objects.filter(pk=dispute_id).exists():
        raise NotFound(f"No dispute #{dispute_id}.")
    waiting: ChainTransaction | None = None
    with transaction.atomic():
        dispute = (Dispute.objects.select_for_update(of=("self",))
                   .select_related("provider", "assignment", "job").get(pk=dispute_id))
        if dispute.status != D.OPEN:
            return dispute
        if not dispute.attributed:
            job_states.note(job_id=dispute.job_id, reason="dispute_unattributed",
                            message=f"Dispute #{dispute.pk} is not attributed to {dispute.provider.name}'s "
                                    "node: no slash. Staff review it.")
            return dispute
        slash, _ = DisputeSlash.objects.get_or_create(dispute=dispute, defaults={"key": dispute_key(dispute)})
        key = bytes.fromhex(slash.key[2:])
        if slash.transaction is not None:
            stored = sender.check(slash.transaction)
            if stored.status != T.REVERTED:
                waiting = stored  # sent before: see it through, never send a second
            elif stake_contract().functions.slashedFor(key).call() == 0:
                slash.transaction = None  # refused on chain (e.g. paused): send again
            # else: slashed by another transaction; the indexer records it below
        if slash.transaction_id is None and waiting is None:
            address, at_stake = _stake_address(dispute.provider)
            if address is None:
                note = f"{dispute.provider.name} has no stake to slash; the dispute stays open."
                if slash.note != note:
                    job_states.note(job_id=dispute.job_id, reason="dispute_no_stake",
                                    message=f"Dispute #{dispute.pk}: {note}")
                slash.note = note
                slash.save(update_fields=["note", "updated_at"])
                return dispute
            amount = min(slash_policy_amount(dispute), from_units(at_stake))
            recipient = treasury_address()
            reason_code = Dispute.REASON_CODES[Dispute.Reason(dispute.reason)]
            call = stake_contract().functions.slash(address, to_units(amount), reason_code, key, recipient)
            waiting = sender.send(key=operator_key(), purpose="slash", call=call)
            slash.provider_address, slash.recipient, slash.amount = address, recipient, amount
            slash.transaction, slash.note = waiting, ""
            slash.save()
            audit.audit_record(actor=actor, action="dispute.slash", obj=dispute,
                               data={"amount": str(amount), "recipient": recipient, "tx": waiting.tx_hash},
                               message=f"Slashing {dispute.provider.name} by {tusd(amount)} for "
                                       f"dispute #{dispute.pk}.")
    # After the commit (the transaction is broadcast then): wait for it, then index it.
    if waiting is not None:
        sender.wait(waiting)
    indexer.index_events()
    dispute.refresh_from_db()
    return dispute


def dispute_dismiss(*, dispute: Dispute, actor=None) -> Dispute:
    """Close an open dispute without a slash (an administrator's decision)."""
    with transaction.atomic():
        locked = Dispute.objects.select_for_update().get(pk=dispute.pk)
        if locked.status != D.OPEN:
            raise Conflict(f"Dispute #{locked.pk} is {locked.get_status_display().lower()} already.")
        slash = DisputeSlash.objects.filter(dispute=locked).select_related("transaction").first()
        if slash and slash.transaction is not None and sender.check(slash.transaction).status != T.REVERTED:
            raise Conflict(f"A slash for dispute #{locked.pk} is on its way ({slash.transaction.tx_hash}).")
        locked.status, locked.resolved_at = D.DISMISSED, timezone.now()
        locked.save(update_fields=["status", "resolved_at"])
        audit.audit_record(actor=actor, action="dispute.dismiss", obj=locked,
                           message=f"Dismissed dispute #{locked.pk}.")
        job_states.note(job_id=locked.job_id, reason="dispute_dismissed", actor=actor,
                        message=f"Dispute #{locked.pk} was dismissed without a slash.")
    return locked


def dispute_slash_enqueue(*, dispute: Dispute) -> None:
    """The slash runs on the chain queue (one sender)."""
    enqueue.enqueue(task_names.DISPUTE_SLASH, dispute.pk)
