"""Read models of stake: a provider's stake panel, and disputes."""

from decimal import Decimal

from django.conf import settings

from ..models import Organization, ProviderStake, StakeEvent, StakeOperation
from .payments import tx_url


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


def stake_panel(org: Organization) -> dict:
    """A provider's stake per address, its totals and history (newest first)."""
    rows = list(ProviderStake.objects.filter(organization=org).order_by("address"))
    events = (StakeEvent.objects.filter(stake__organization=org).select_related("stake", "dispute")
              .order_by("-block_number", "-log_index")[:50])
    operations = (StakeOperation.objects.filter(organization=org).select_related("transaction")
                  .order_by("-created_at", "-id")[:20])
    return {
        "stakes": rows,
        "staked": sum((r.staked for r in rows), start=Decimal(0)),
        "pending": sum((r.pending for r in rows), start=Decimal(0)),
        "slashed": sum((r.slashed_total for r in rows), start=Decimal(0)),
        "unlock_at": max((r.unlock_at for r in rows if r.unlock_at), default=None),
        "events": [{"kind": e.get_kind_display(), "amount": e.amount, "address": e.stake.address,
                    "dispute": e.dispute_id, "recipient": e.recipient, "tx": e.tx_hash,
                    "tx_url": tx_url(e.tx_hash), "block": e.block_number} for e in events],
        "operations": [{"kind": o.get_kind_display(), "amount": o.amount, "status": o.transaction.status,
                        "tx": o.transaction.tx_hash, "tx_url": tx_url(o.transaction.tx_hash),
                        "at": o.created_at} for o in operations],
        "delay_s": settings.STAKE_WITHDRAW_DELAY_S,
        "delay_text": _duration(settings.STAKE_WITHDRAW_DELAY_S),
        "min_for_verified_tags": settings.MIN_STAKE_FOR_VERIFIED_TAGS,
    }


def stake_api(org: Organization) -> dict:
    panel = stake_panel(org)
    return {
        "staked": f"{panel['staked']:.6f}", "pending": f"{panel['pending']:.6f}",
        "slashed": f"{panel['slashed']:.6f}",
        "unlock_at": panel["unlock_at"].isoformat() if panel["unlock_at"] else None,
        "withdraw_delay_s": panel["delay_s"],
        "min_stake_for_verified_tags": str(panel["min_for_verified_tags"]),
        "addresses": [{"address": r.address, "staked": str(r.staked), "pending": str(r.pending),
                       "unlock_at": r.unlock_at.isoformat() if r.unlock_at else None,
                       "slashed_total": str(r.slashed_total)} for r in panel["stakes"]],
        "history": [{**{k: v for k, v in e.items() if k != "tx_url"}, "amount": str(e["amount"])}
                    for e in panel["events"]],
    }
