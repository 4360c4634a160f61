"""What an operator watches, read at scrape time (webapp/ops.py exposes it as metrics): a
handful of aggregate queries on indexed columns, no rows."""

from django.db.models import Count, F, Max, Min
from django.utils import timezone

from ..models import ChainAccount, ChainTransaction, Job, Node

# The signed and sent transactions the chain sender still owes an outcome (marketplace/chain/sender.py).
CHAIN_PENDING = (ChainTransaction.Status.SIGNED, ChainTransaction.Status.SENT, ChainTransaction.Status.MINED)


def jobs_by_status() -> dict[str, int]:
    """Every status of the state machine, zeros included (a missing series reads as 'no data')."""
    counts = dict.fromkeys(Job.Status.values, 0)
    counts.update(Job.objects.values_list("status").annotate(n=Count("id")).order_by())
    return counts


def nodes_by_status() -> dict[str, int]:
    counts = dict.fromkeys(Node.Status.values, 0)
    counts.update(Node.objects.values_list("status").annotate(n=Count("id")).order_by())
    return counts


def heartbeat_lag_s() -> dict[str, float]:
    """Seconds since the last heartbeat of the online nodes: the stalest and the freshest
    (0 and 0 with no node online). The watchdog turns a node offline past
    NODE_HEARTBEAT_TIMEOUT_S; a stalest lag creeping towards it means heartbeats are late."""
    row = Node.objects.filter(status=Node.Status.ONLINE, last_heartbeat_at__isnull=False).aggregate(
        oldest=Min("last_heartbeat_at"), newest=Max("last_heartbeat_at"))
    now = timezone.now()
    return {"max": (now - row["oldest"]).total_seconds() if row["oldest"] else 0.0,
            "min": (now - row["newest"]).total_seconds() if row["newest"] else 0.0}


def chain_pending_by_status() -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(CHAIN_PENDING, 0)
    counts.update(ChainTransaction.objects.filter(status__in=CHAIN_PENDING, lost_reason="")
                  .values_list("status").annotate(n=Count("id")).order_by())
    return counts


def chain_oldest_pending_s() -> float:
    """Age of the oldest transaction still pending (0 with none)."""
    oldest = ChainTransaction.objects.filter(status__in=CHAIN_PENDING, lost_reason="").aggregate(
        at=Min("created_at"))["at"]
    return (timezone.now() - oldest).total_seconds() if oldest else 0.0


def chain_sender_accounts(chain_id: int) -> list[tuple[str, int]]:
    """(address, next nonce the platform will sign with) of each sending account."""
    return list(ChainAccount.objects.filter(chain_id=chain_id).values_list("address", F("next_nonce")))
