"""Dashboards and the marketplace update live (Redis channel layer, real ASGI stack)."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from marketplace import job_states
from marketplace.models import Job, Node
from marketplace.services.nodes import node_set_presence
from marketplace.services.offers import offer_set_status
from webapp.asgi import application

from .factories import JobFactory

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://testserver")


def socket(path: str, user=None):
    headers = [ORIGIN]
    if user is not None:
        headers.append((b"authorization", f"Token {Token.objects.get_or_create(user=user)[0].key}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def _first_and_after(comm, action):
    ok, _ = await comm.connect()
    if not ok:
        return None, None
    first = json.loads(await comm.receive_from(timeout=5)) if "dashboard" in comm.scope["path"] else None
    await database_sync_to_async(action)()
    later = json.loads(await comm.receive_from(timeout=5))
    await comm.disconnect()
    return first, later


def test_anonymous_users_have_no_dashboard():
    async def go():
        comm = socket("/ws/dashboard/")
        ok, _ = await comm.connect()
        return ok
    assert asyncio.run(go()) is False


def test_a_consumer_dashboard_lists_its_jobs_and_follows_their_status(alice, healthcare, energy):
    mine = JobFactory(owner=healthcare, status=Job.Status.MATCHING, name="mine")
    JobFactory(owner=energy, name="theirs")
    comm = socket("/ws/dashboard/", alice)
    first, later = asyncio.run(_first_and_after(comm, lambda: job_states.transition(
        job_id=mine.pk, to=Job.Status.CANCELLED, reason="test", message="stop")))
    assert [j["name"] for j in first["jobs"]] == ["mine"]
    assert later["type"] == "job" and later["job"]["id"] == mine.pk and later["job"]["status"] == "cancelled"


def test_a_provider_dashboard_shows_its_nodes_going_online(carol, carol_node):
    Node.objects.filter(pk=carol_node.pk).update(status=Node.Status.OFFLINE)
    comm = socket("/ws/dashboard/", carol)
    first, later = asyncio.run(_first_and_after(comm, lambda: node_set_presence(
        node_id=carol_node.pk, online=True)))
    assert [n["name"] for n in first["nodes"]] == ["carol-a100"] and first["jobs"] == []
    assert later == {"type": "node", "node": later["node"]} and later["node"]["status"] == "online"


def test_the_marketplace_sees_an_offer_paused_without_reloading(carol_offer, provider_org):
    comm = socket("/ws/market/")
    _, later = asyncio.run(_first_and_after(comm, lambda: offer_set_status(
        provider=provider_org, offer=carol_offer, status="paused")))
    assert later["type"] == "offer" and later["offer"]["id"] == carol_offer.pk
    assert later["offer"]["status"] == "paused" and later["offer"]["gpus_available"] == 8


@pytest.mark.parametrize(("path", "who", "origin", "allowed"), [
    ("/ws/dashboard/", "alice", ORIGIN, True),
    ("/ws/dashboard/", "carol", ORIGIN, True),
    ("/ws/dashboard/", None, ORIGIN, False),
    ("/ws/dashboard/", "alice", (b"origin", b"http://evil.example"), False),
    ("/ws/market/", None, ORIGIN, True),  # offers are public
    ("/ws/market/", None, (b"origin", b"http://evil.example"), False),
    ("/ws/agent/", "alice", ORIGIN, False),  # a person's API token is not a node's token
])
def test_socket_authorization_matrix(request, path, who, origin, allowed):
    user = request.getfixturevalue(who) if who else None
    headers = [origin]
    if user is not None:
        headers.append((b"authorization", f"Token {Token.objects.get_or_create(user=user)[0].key}".encode()))

    async def go():
        comm = WebsocketCommunicator(application, path, headers=headers)
        ok, _ = await comm.connect()
        await comm.disconnect()
        return ok
    assert asyncio.run(go()) is allowed


def test_another_consumer_never_hears_of_my_jobs(alice, bob, healthcare, energy):
    job = JobFactory(owner=healthcare, status=Job.Status.MATCHING)
    key = Token.objects.get_or_create(user=bob)[0].key

    async def go():
        comm = WebsocketCommunicator(application, "/ws/dashboard/",
                                     headers=[ORIGIN, (b"authorization", f"Token {key}".encode())])
        assert (await comm.connect())[0]
        summary = json.loads(await comm.receive_from(timeout=5))
        await database_sync_to_async(job_states.transition)(
            job_id=job.pk, to=Job.Status.CANCELLED, reason="test", message="stop")
        # A barrier instead of a quiet period: bob's own job changes after alice's, and the
        # changes are published in that order, so the first frame bob gets is his own job's
        # unless alice's reached him before it.
        own = await database_sync_to_async(JobFactory)(owner=energy, status=Job.Status.MATCHING)
        await database_sync_to_async(job_states.transition)(
            job_id=own.pk, to=Job.Status.CANCELLED, reason="test", message="stop")
        first = json.loads(await comm.receive_from(timeout=5))
        await comm.disconnect()
        return summary, first, own.pk
    summary, first, own_id = asyncio.run(go())
    assert summary["jobs"] == []
    assert (first["type"], first["job"]["id"]) == ("job", own_id), first


def test_money_moving_reaches_its_organization_s_account_pages_only(alice, bob, healthcare, energy):
    """Issue 18: funding and settlement tell the owner's open Account pages and header
    balances to refresh ("account", no amount on the wire: the page reads them again under
    its own authorization); another tenant's socket hears nothing of it, and a page that only
    follows the balance (`?summary=0`) is sent no summary of jobs."""
    from decimal import Decimal

    from marketplace.services import live

    from .money_support import escrow_funded, escrow_settled

    job = JobFactory(owner=healthcare, status=Job.Status.SUBMITTED, budget=Decimal("25"))
    JobFactory(owner=healthcare, status=Job.Status.MATCHING)

    def settle():
        Job.objects.filter(pk=job.pk).update(status=Job.Status.COMPLETED)  # the run itself is not the point
        escrow_settled(job, charged=Decimal("2"), fee=Decimal("0.1"))

    async def frames_until_account(comm) -> list[dict]:
        frames = [json.loads(await comm.receive_from(timeout=5))]
        while frames[-1]["type"] != "account":
            frames.append(json.loads(await comm.receive_from(timeout=5)))
        return frames

    mine, theirs = socket("/ws/dashboard/?summary=0", alice), socket("/ws/dashboard/?summary=0", bob)

    async def go():
        assert (await mine.connect())[0] and (await theirs.connect())[0]
        summaries = [json.loads(await c.receive_from(timeout=5)) for c in (mine, theirs)]
        await database_sync_to_async(escrow_funded)(job, Decimal("25"))
        funded = await frames_until_account(mine)
        await database_sync_to_async(settle)()
        settled = await frames_until_account(mine)
        # A barrier instead of a quiet period: bob's organization's money moves after alice's,
        # so the first frame bob gets is his own unless one of alice's reached him before it.
        await database_sync_to_async(live.account_changed)([energy.pk])
        first = json.loads(await theirs.receive_from(timeout=5))
        for c in (mine, theirs):
            await c.disconnect()
        return summaries, funded, settled, first

    summaries, funded, settled, first = asyncio.run(go())
    assert summaries == [{"type": "summary", "jobs": [], "nodes": []}] * 2
    assert funded[-1] == {"type": "account", "job_id": job.pk}
    assert [f["job"]["status"] for f in funded if f["type"] == "job"] == ["funded"]
    assert settled[-1] == {"type": "account", "job_id": job.pk}
    assert first == {"type": "account", "job_id": None}
