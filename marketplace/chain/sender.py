"""Sending the platform's transactions: exactly one transaction per intent, whatever fails.

1. The nonce comes from the sending account's row, locked (`ChainAccount`): any number of
   workers may send at once and never pick the same nonce.
2. The transaction is signed and stored (raw bytes and hash) in the same database
   transaction that takes the nonce, before it is broadcast.
3. Broadcasting re-sends the stored bytes; a node that already has them answers "known" or
   "nonce too low", which is checked against the receipt. A worker killed between storing and
   broadcasting leaves a SIGNED row that `resend_stale` broadcasts later: same hash, so it can
   never be paid twice.
"""

import logging
import time

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone
from eth_account import Account
from web3.exceptions import ContractCustomError, ContractLogicError, TransactionNotFound

from ..models import ChainAccount, ChainTransaction
from .client import ChainError, chain_id, short_error, unavailable, w3

log = logging.getLogger(__name__)
T = ChainTransaction.Status
# Answers from nodes that mean "this exact transaction is already there".
_KNOWN = ("already known", "known transaction", "already imported", "transaction already in pool")


def _revert_reason(exc: Exception) -> str:
    if isinstance(exc, ContractCustomError) and getattr(exc, "data", None):
        return f"the contract refused it (custom error {str(exc.data)[:10]})"
    return f"the contract refused it: {short_error(exc)}"


def send(*, key: str, purpose: str, call=None, tx: dict | None = None,
         gas: int | None = None) -> ChainTransaction:
    """Sign `call` (a web3 contract function call) or `tx` (to/value/data) with `key`, store
    it, and broadcast it once the database transaction that stored it commits (inside a
    caller's transaction: after the caller's commit, in the order sent). Raises ChainError
    when the node refuses it up front (a revert seen by the gas estimate): nothing is stored
    then and no nonce is used. `gas` skips the estimate (for a call that depends on an
    earlier one not yet mined)."""
    account = Account.from_key(key)
    cid = chain_id()
    base = {"from": account.address, "chainId": cid, **({"gas": gas} if gas else {})}
    try:
        body = call.build_transaction(base) if call is not None else {**base, **(tx or {})}
        if "gas" not in body:
            body["gas"] = w3().eth.estimate_gas(body)
        if "maxFeePerGas" not in body and "gasPrice" not in body:
            body.update(_fees())
    except (ContractLogicError, ContractCustomError) as exc:
        raise ChainError(_revert_reason(exc), code="reverted") from exc
    except ChainError:
        raise
    except Exception as exc:
        if "execution reverted" in str(exc):  # the in-process EVM's revert (eth-tester's TransactionFailed)
            raise ChainError(_revert_reason(exc), code="reverted") from exc
        raise unavailable(exc) from exc
    body.pop("from", None)
    with transaction.atomic():
        row = _account(cid, account.address)
        body["nonce"] = row.next_nonce
        signed = Account.sign_transaction(body, key)
        stored = ChainTransaction.objects.create(
            chain_id=cid, purpose=purpose, sender=account.address, to=body.get("to") or "",
            nonce=row.next_nonce, raw=signed.raw_transaction.hex(),
            tx_hash="0x" + signed.hash.hex().removeprefix("0x"))
        row.next_nonce += 1
        row.save(update_fields=["next_nonce"])
        # Never before the row is committed: a transaction on the chain that the database
        # forgot would leave its nonce to be used twice.
        transaction.on_commit(lambda: broadcast(stored))
    return stored


def _fees() -> dict:
    block = w3().eth.get_block("latest")
    base = block.get("baseFeePerGas")
    if base is None:
        return {"gasPrice": w3().eth.gas_price}
    tip = 1_000_000_000 if not settings.CHAIN_RPC_URL else w3().eth.max_priority_fee
    return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}


def _account(cid: int, address: str) -> ChainAccount:
    """The locked nonce row; created from the chain's pending count the first time."""
    row = ChainAccount.objects.select_for_update().filter(chain_id=cid, address=address).first()
    if row is None:
        pending = w3().eth.get_transaction_count(address, "pending")
        ChainAccount.objects.get_or_create(chain_id=cid, address=address, defaults={"next_nonce": pending})
        row = ChainAccount.objects.select_for_update().get(chain_id=cid, address=address)
    return row


def broadcast(stored: ChainTransaction) -> None:
    """Send the stored bytes (again). Errors are recorded, not raised: the row stays SIGNED
    or SENT and `resend_stale` tries again. A row whose chain is gone is never sent to another."""
    if stored.lost_reason:
        return
    try:
        w3().eth.send_raw_transaction(bytes.fromhex(stored.raw.removeprefix("0x")))
    except Exception as exc:
        text = short_error(exc).lower()
        # "Nonce too low" is ours only if the chain has our hash; otherwise the nonce went to
        # another transaction, which needs a person: it stays recorded as an error.
        if not (any(k in text for k in _KNOWN) or ("nonce too low" in text and _mined(stored))):
            ChainTransaction.objects.filter(pk=stored.pk).update(
                error=short_error(exc)[:500], broadcasts=F("broadcasts") + 1, updated_at=timezone.now())
            log.warning("broadcast of %s failed: %s", stored.tx_hash, short_error(exc))
            return
    ChainTransaction.objects.filter(pk=stored.pk).update(
        status=Case(When(status=T.SIGNED, then=Value(T.SENT)), default=F("status")),
        broadcasts=F("broadcasts") + 1, error="", updated_at=timezone.now())
    stored.refresh_from_db()


def _mined(stored: ChainTransaction) -> bool:
    try:
        return w3().eth.get_transaction_receipt(stored.tx_hash) is not None
    except Exception:
        return False


def check(stored: ChainTransaction) -> ChainTransaction:
    """Look at the receipt: MINED, CONFIRMED (enough confirmations) or REVERTED."""
    if stored.status in (T.CONFIRMED, T.REVERTED) or stored.lost_reason:
        return stored  # a lost chain's row: this node's answer would be about another chain
    try:
        receipt = w3().eth.get_transaction_receipt(stored.tx_hash)
    except TransactionNotFound:
        return stored
    except Exception as exc:
        raise unavailable(exc) from exc
    fields = {"block_number": receipt["blockNumber"], "gas_used": receipt["gasUsed"]}
    if receipt["status"] != 1:
        fields.update(status=T.REVERTED, error="reverted on chain")
    else:
        head = w3().eth.block_number
        confirmations = head - receipt["blockNumber"] + 1
        fields["status"] = T.CONFIRMED if confirmations >= settings.CHAIN_CONFIRMATIONS else T.MINED
    ChainTransaction.objects.filter(pk=stored.pk).update(**fields, updated_at=timezone.now())
    stored.refresh_from_db()
    return stored


def wait(stored: ChainTransaction, *, timeout_s: float | None = None) -> ChainTransaction:
    """Poll until confirmed or reverted (re-broadcasting if the node lost it)."""
    deadline = time.monotonic() + (timeout_s if timeout_s is not None else settings.CHAIN_RECEIPT_TIMEOUT_S)
    delay = 0.05
    while True:
        stored = check(stored)
        if stored.status in (T.CONFIRMED, T.REVERTED):
            return stored
        if stored.lost_reason:
            raise ChainError(f"Transaction {stored.tx_hash} was sent on a chain that is gone: "
                             f"{stored.lost_reason}", code="chain_lost")
        if time.monotonic() > deadline:
            raise ChainError(f"Transaction {stored.tx_hash} is not confirmed yet; it will be checked again.",
                             code="not_confirmed")
        if stored.status == T.SIGNED:
            broadcast(stored)
        time.sleep(delay)
        delay = min(1.0, delay * 2)


def resend_stale(*, older_than_s: float | None = None) -> int:
    """Broadcast again what is signed or sent but not yet mined, oldest nonce first."""
    cutoff = timezone.now() - timezone.timedelta(
        seconds=settings.CHAIN_RESEND_AFTER_S if older_than_s is None else older_than_s)
    count = 0
    for stored in ChainTransaction.objects.filter(status__in=(T.SIGNED, T.SENT, T.MINED), lost_reason="",
                                                  updated_at__lte=cutoff).order_by("sender", "nonce"):
        stored = check(stored)
        if stored.status in (T.SIGNED, T.SENT):
            broadcast(stored)
            count += 1
    return count
