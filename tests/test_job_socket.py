"""The job socket over the real ASGI stack and the Redis channel layer: who may watch,
what a browser may send, and a resync that delivers every sequence number exactly once."""

import asyncio
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from channels.testing import WebsocketCommunicator
from django.utils import timezone
from rest_framework.authtoken.models import Token

from marketplace.models import Assignment, Job, MetricPoint
from marketplace.services.agent_ingest import agent_data
from webapp.asgi import application

from .factories import JobFactory, NodeFactory, OfferFactory

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://testserver")


def key_of(user) -> str | None:
    return Token.objects.get_or_create(user=user)[0].key if user is not None else None


def communicator(job_id: int, key: str | None, origin=ORIGIN):
    headers = [origin] if origin else []
    if key:
        headers.append((b"authorization", f"Token {key}".encode()))
    return WebsocketCommunicator(application, f"/ws/jobs/{job_id}/", headers=headers)


async def _can_connect(job_id, user, origin=ORIGIN) -> bool:
    comm = communicator(job_id, user, origin)
    ok, _ = await comm.connect()
    await comm.disconnect()
    return ok


@pytest.fixture
def running_job(healthcare, provider_org):
    job = JobFactory(owner=healthcare, status=Job.Status.RUNNING)
    node = NodeFactory(provider=provider_org)
    Assignment.objects.create(job=job, node=node, offer=OfferFactory(node=node), attempt=1, node_rank=0,
                              gpus=1, price_per_gpu_hour=Decimal("2"), status=Assignment.Status.RUNNING,
                              started_at=timezone.now() - timedelta(minutes=30))
    return job


@pytest.mark.parametrize(("who", "origin", "allowed"), [
    ("alice", ORIGIN, True),        # the owner organization
    ("bob", ORIGIN, False),         # another consumer
    ("carol", ORIGIN, True),        # the provider running it
    ("dave", ORIGIN, False),        # another provider
    ("admin_user", ORIGIN, True),   # staff
    (None, ORIGIN, False),          # anonymous
    ("alice", (b"origin", b"http://evil.example"), False),  # cross-origin
])
def test_who_may_watch_a_job(request, running_job, who, origin, allowed):
    user = request.getfixturevalue(who) if who else None
    assert asyncio.run(_can_connect(running_job.pk, key_of(user), origin)) is allowed


async def _exchange(job_id, user, sends):
    comm = communicator(job_id, user)
    assert (await comm.connect())[0]
    replies = []
    for s in sends:
        await comm.send_to(text_data=s)
        replies.append(json.loads(await comm.receive_from(timeout=5)))
    await comm.disconnect()
    return replies


def test_a_browser_may_only_ask_for_a_resync(running_job, alice):
    replies = asyncio.run(_exchange(running_job.pk, key_of(alice), [
        "not json", json.dumps({"type": "progress", "items": []}),
        json.dumps({"type": "resync", "after_seq": "x"}),
        json.dumps({"type": "resync", "after_seq": 0, "after_log_seq": 0})]))
    assert [r["type"] for r in replies] == ["error", "error", "error", "history"]
    job = replies[-1]["job"]
    # 30 minutes of one GPU at 2 tUSD/GPU-h
    assert job["status"] == "running"
    assert abs(Decimal(job["cost_so_far"]) - Decimal("1")) < Decimal("0.02")
    assert not MetricPoint.objects.exists()  # nothing a browser sent was written


def _progress(node, assignment, seq, steps):
    agent_data(node=node, message={"type": "progress", "id": f"m{seq}", "assignment": assignment.pk,
                                    "seq": seq, "items": [{"step": s, "total_steps": 100, "loss": 1 / s}
                                                          for s in steps]})


async def _watch_with_a_reconnect(job, user, node, assignment):
    """Connect, get live points, drop the connection, miss some, reconnect and resync.
    Returns every point's seq as received, duplicates included, in order."""
    from channels.db import database_sync_to_async

    received: list[int] = []

    async def points_until(comm, last):
        while last not in received:
            message = json.loads(await comm.receive_from(timeout=5))
            if message["type"] == "metrics":
                received.extend(p["seq"] for p in message["points"])

    comm = communicator(job.pk, user)
    assert (await comm.connect())[0]
    await comm.send_to(text_data=json.dumps({"type": "resync", "after_seq": 0, "after_log_seq": 0}))
    history = json.loads(await comm.receive_from(timeout=5))
    received.extend(p["seq"] for p in history["metrics"])
    await database_sync_to_async(_progress)(node, assignment, 2, [4, 5, 6])
    await points_until(comm, 6)
    await comm.disconnect()
    await database_sync_to_async(_progress)(node, assignment, 3, [7, 8])  # while away
    comm = communicator(job.pk, user)
    assert (await comm.connect())[0]
    await comm.send_to(text_data=json.dumps({"type": "resync", "after_seq": max(received),
                                             "after_log_seq": 0}))
    history = json.loads(await comm.receive_from(timeout=5))
    received.extend(p["seq"] for p in history["metrics"])
    await database_sync_to_async(_progress)(node, assignment, 4, [9, 10])
    await points_until(comm, 10)
    await comm.disconnect()
    return received


def test_a_reconnecting_browser_gets_every_point_exactly_once(running_job, alice):
    assignment = running_job.assignments.get()
    node = assignment.node
    _progress(node, assignment, 1, [1, 2, 3])  # before anyone watched
    received = asyncio.run(_watch_with_a_reconnect(running_job, key_of(alice), node, assignment))
    # Counted as received: a point sent twice (live and again in the resync) fails here.
    duplicates = sorted({seq for seq in received if received.count(seq) > 1})
    assert duplicates == [] and received == list(range(1, 11)), received
    stored = MetricPoint.objects.filter(job=running_job).values_list("seq", flat=True)
    assert list(stored) == list(range(1, 11))
