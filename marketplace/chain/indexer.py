"""Reading contracts' events, generically: the indexer knows where it stopped and which
blocks are confirmed, never what an event means.

A source (a contract, the events wanted from it, what applies one) is registered by the
service that owns those events (services/chain_events.py, connected in apps.py), so the
chain layer calls nothing above it. The indexer reads logs in block ranges from where it
stopped (a cursor per chain and contract), up to the newest block with enough
confirmations, and applies each range in one database transaction with the cursor, so a
crash re-reads the range and every handler must be idempotent.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from eth_utils import event_abi_to_log_topic

from ..models import ChainContract, ChainCursor
from .client import ChainError, chain_id, unavailable, w3
from .deploy import addresses

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A deployed contract's events and what applies one: apply(name, args, tx_hash, log_entry)."""

    name: str  # the contract's name in ChainContract ("escrow", "stake")
    contract: Callable[[], Any]
    events: tuple[str, ...]
    apply: Callable[[str, Any, str, Any], None]


_sources: dict[str, Source] = {}


def source_register(source: Source) -> None:
    """Read `source`'s events from now on (once per name; registering again replaces it)."""
    _sources[source.name] = source


def _topics(contract, names) -> dict[bytes, str]:
    return {event_abi_to_log_topic(e): e["name"] for e in contract.abi
            if e["type"] == "event" and e["name"] in names}


def index_events(*, max_ranges: int = 50) -> int:
    """Apply new events of every registered source that is deployed; returns how many."""
    found = addresses()
    return sum(_index(source.contract(), source.name, source.events, source.apply, max_ranges)
               for name, source in list(_sources.items()) if name in found)


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
    row = ChainContract.objects.filter(chain_id=cid, name=name).first()
    return row.block_number if row else 0
