"""Live updates for the browser: the mechanics of sending to a job's Channels group (and to
the dashboards and the marketplace), always after the data is committed (persist first,
broadcast second). Group messages may be lost; browsers resync from the database by
sequence number, so a lost one is only late. What is sent is read in selectors/live.py."""

import threading
import time
from collections import defaultdict
from contextlib import contextmanager

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from ..models import Offer
from ..selectors.live import OFFER_FIELDS, job_brief, job_snapshots, job_watchers, node_brief, offer_brief


def job_group(job_id: int) -> str:
    return f"job.{job_id}"


_batch = threading.local()


def _deliver(group: str, event: dict) -> None:
    """Send to a group now, or add it to the active outbox (sent by the caller's loop)."""
    outbox = getattr(_batch, "outbox", None)
    if outbox is not None:
        outbox.append((group, event))
        return
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(group, event)


@contextmanager
def coalesced(outbox: list | None = None, deferred: set | None = None):
    """While active (in this thread), broadcasts are gathered and sent once at the end: one
    metrics message and one logs message per job, one snapshot per job. Nothing is sent if
    the block fails (its transaction rolled back). With `outbox`, the (group, event) pairs
    are appended to it instead of sent: an async caller sends them without a round trip
    through a thread for each. With `deferred`, the jobs due a progress snapshot are added
    to it instead (the caller sends `snapshots` for them, at its own pace)."""
    _batch.messages, _batch.changed, _batch.throttled = defaultdict(list), set(), set()
    try:
        yield
    except BaseException:
        _batch.messages = _batch.changed = _batch.throttled = None
        raise
    messages, changed, throttled = _batch.messages, _batch.changed, _batch.throttled
    _batch.messages = _batch.changed = _batch.throttled = None
    _batch.outbox = outbox
    try:
        for job_id, items in messages.items():
            for kind, key in (("metrics", "points"), ("logs", "lines")):
                merged = [x for m in items if m["type"] == kind for x in m[key]]
                if merged:
                    _deliver(job_group(job_id),
                             {"type": "job.update", "message": {"type": kind, key: merged}})
        for job_id in changed:
            job_changed(job_id)
        if deferred is not None:
            deferred.update(throttled - changed)
        else:
            for job_id in throttled - changed:
                job_changed(job_id, throttle=True)
    finally:
        _batch.outbox = None


def _gathering() -> bool:
    return getattr(_batch, "messages", None) is not None


def broadcast(job_id: int, message: dict) -> None:
    if _gathering():
        _batch.messages[job_id].append(message)
        return
    transaction.on_commit(lambda: _deliver(job_group(job_id), {"type": "job.update", "message": message}))


_last_snapshot: dict[int, float] = {}
SNAPSHOT_EVERY_S = 2.0


def _snapshot_due(job_id: int) -> bool:
    """At most one progress snapshot every two seconds per job from this process (a dict, not a
    Redis round trip: this runs for every batch of progress)."""
    now = time.monotonic()
    if now - _last_snapshot.get(job_id, -SNAPSHOT_EVERY_S) < SNAPSHOT_EVERY_S:
        return False
    if len(_last_snapshot) > 10_000:
        _last_snapshot.clear()
    _last_snapshot[job_id] = now
    return True


def job_changed(job_id: int, *, throttle: bool = False) -> None:
    """Tell the job's watchers its current state, once the transaction commits. Progress
    asks with `throttle`: at most one snapshot every SNAPSHOT_EVERY_S per job (status changes always go)."""
    if _gathering():
        (_batch.throttled if throttle else _batch.changed).add(job_id)
        return
    if throttle and not _snapshot_due(job_id):
        return

    def send():
        for group, event in snapshots([job_id], account=not throttle):
            _deliver(group, event)
    transaction.on_commit(send)


def on_job_changed(sender, *, job_id: int, **kwargs) -> None:
    """job_states.job_changed's receiver (apps.py): a status change or a timeline note."""
    job_changed(job_id)


def snapshots(job_ids, *, events: int = 10, account: bool = False) -> list[tuple[str, dict]]:
    """Snapshots of jobs for their pages and for their owner's and providers' dashboards, as
    (group, event) pairs for the caller to send, in four queries however many jobs: after a
    status change (one job) and from the agent ingest every few seconds per busy job
    (`events=1`: progress adds no timeline entries). `events` is how many of each job's
    newest timeline entries go along (one commit can add several). With `account` (a status
    change or a timeline note: funding, settlement, refund; never mere progress) the
    watchers' Account pages and header balances are told to refresh as well."""
    out = []
    for job, snapshot in job_snapshots(job_ids, events=events):
        out.append((job_group(job.pk), {"type": "job.update", "message": {"type": "job", "job": snapshot}}))
        brief = {"type": "job", "job": job_brief(job, snapshot)}
        for org_id in job_watchers(job):
            out.append((org_group(org_id), {"type": "live.update", "message": brief}))
            if account:
                out.append((org_group(org_id), {"type": "live.update",
                                                 "message": account_message(job_id=job.pk)}))
    return out


def account_message(*, job_id: int | None = None) -> dict:
    """"Your money moved": the Account page and the header balance read it again from the
    server (its selectors, which check who asks), so no amount travels on the socket."""
    return {"type": "account", "job_id": job_id}


def account_changed(org_ids, *, job_id: int | None = None) -> None:
    """Money of these organizations moved outside a job's transitions (a faucet grant, a
    dispute refund, a stake): their Account pages and header balances refresh, after the commit."""
    ids = sorted(set(org_ids))

    def send():
        for org_id in ids:
            _send(org_group(org_id), account_message(job_id=job_id))
    transaction.on_commit(send)


# --- dashboards and the marketplace ---------------------------------------------------
def org_group(org_id: int) -> str:
    return f"org.{org_id}"


MARKET_GROUP = "market"


def _send(group: str, message: dict, *, kind: str = "live.update") -> None:
    _deliver(group, {"type": kind, "message": message})


def nodes_changed(nodes: list) -> None:
    """Nodes went online or offline (a fleet coming online): their providers' dashboards and
    the offers pages; their offers read in one query."""
    offers: dict[int, list[dict]] = {}
    for o in Offer.objects.filter(node__in=nodes).values("node_id", *OFFER_FIELDS):
        offers.setdefault(o.pop("node_id"), []).append(o)
    briefs = [(node.provider_id, node_brief(node), offers.get(node.pk, [])) for node in nodes]

    def send():
        for provider_id, brief, node_offers in briefs:
            _send(org_group(provider_id), {"type": "node", "node": brief})
            for o in node_offers:
                _send(MARKET_GROUP, {"type": "offer", "offer": offer_brief(o)})
    transaction.on_commit(send)


def offers_changed(offer_ids) -> None:
    """Offers whose free capacity or status changed: the marketplace pages update."""
    ids = list(offer_ids)

    def send():
        for o in Offer.objects.filter(pk__in=ids).values(*OFFER_FIELDS):
            _send(MARKET_GROUP, {"type": "offer", "offer": offer_brief(o)})
    transaction.on_commit(send)
