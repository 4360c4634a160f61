"""Reading the escrow's and the stake contract's events: what the chain says moves escrows,
jobs, stakes and disputes.

The indexer reads logs in block ranges from where it stopped (a cursor per chain and
contract), up to the newest block with enough confirmations, and applies each range in
one database transaction with the cursor, so a crash re-reads the range and every handler
is idempotent.
"""

import logging

from django.conf import settings
from django.db import transaction
from eth_utils import event_abi_to_log_topic

from ..payment_models import ChainCursor
from .client import ChainError, chain_id, unavailable, w3
from .deploy import addresses, escrow_contract

log = logging.getLogger(__name__)
EVENTS = ("JobFunded", "JobToppedUp", "JobSettled", "JobRefunded", "SettlementSkipped")
STAKE_EVENTS = ("Staked", "WithdrawalRequested", "Withdrawn", "Slashed")


def _topics(contract, names) -> dict[bytes, str]:
    return {event_abi_to_log_topic(e): e["name"] for e in contract.abi
            if e["type"] == "event" and e["name"] in names}


def index_events(*, max_ranges: int = 50) -> int:
    """Apply new events of the escrow and of the stake contract; returns how many."""
    from ..services import payments, staking
    from .deploy import stake_contract

    found = addresses()
    applied = 0
    if "escrow" in found:
        applied += _index(escrow_contract(), "escrow", EVENTS,
                          lambda name, args, tx, _log: _apply(payments, name, args, tx), max_ranges)
    if "stake" in found:
        applied += _index(stake_contract(), "stake", STAKE_EVENTS,
                          lambda name, args, tx, entry: staking.stake_event_seen(
                              name=name, args=args, tx_hash=tx, log_index=entry["logIndex"],
                              block_number=entry["blockNumber"]), max_ranges)
    return applied


def _index(contract, name: str, events, apply, max_ranges: int) -> int:
    topics = _topics(contract, events)
    try:
        cid = chain_id()
        safe = w3().eth.block_number - (settings.CHAIN_CONFIRMATIONS - 1)
    except ChainError:
        raise
    except Exception as exc:
        raise unavailable(exc) from exc
    cursor, _ = ChainCursor.objects.get_or_create(chain_id=cid, address=contract.address, defaults={
        "last_block": max(0, _deployed_at(cid, name) - 1)})
    applied = 0
    for _ in range(max_ranges):
        start = cursor.last_block + 1
        if start > safe:
            break
        end = min(safe, start + settings.CHAIN_LOG_RANGE - 1)
        logs = w3().eth.get_logs({"address": contract.address, "fromBlock": start, "toBlock": end})
        with transaction.atomic():
            locked = ChainCursor.objects.select_for_update().get(pk=cursor.pk)
            if locked.last_block >= end:  # another indexer got there first
                cursor = locked
                continue
            for entry in logs:
                event_name = topics.get(bytes(entry["topics"][0])) if entry["topics"] else None
                if event_name is None:
                    continue
                event = contract.events[event_name]().process_log(entry)
                apply(event_name, event["args"], "0x" + bytes(entry["transactionHash"]).hex(), entry)
                applied += 1
            locked.last_block = end
            locked.save(update_fields=["last_block"])
            cursor = locked
    return applied


def _deployed_at(cid: int, name: str) -> int:
    from ..payment_models import ChainContract

    row = ChainContract.objects.filter(chain_id=cid, name=name).first()
    return row.block_number if row else 0


def _apply(payments, name: str, args, tx_hash: str) -> None:
    key = "0x" + bytes(args["jobId"]).hex()
    if name == "JobFunded":
        payments.escrow_funded(key=key, consumer=args["consumer"], amount=args["amount"],
                               deadline=args["deadline"], tx_hash=tx_hash)
    elif name == "JobToppedUp":
        payments.escrow_topped_up(key=key, total=args["total"])
    elif name == "JobSettled":
        payments.escrow_closed(key=key, refunded=False, paid=args["paidToProviders"], fee=args["fee"],
                               returned=args["refunded"], tx_hash=tx_hash)
    elif name == "JobRefunded":
        payments.escrow_closed(key=key, refunded=True, paid=0, fee=0, returned=args["amount"],
                               tx_hash=tx_hash)
    elif name == "SettlementSkipped":  # the batch paid nothing for this job: say why
        payments.escrow_settlement_skipped(key=key, state=args["state"], tx_hash=tx_hash)
