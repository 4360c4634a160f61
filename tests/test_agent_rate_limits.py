"""The agent socket's rate limits are the authenticated node's, over the real ASGI stack and
the Redis channel layer: a flood of heartbeats, or of messages naming assignments the sender
chose, is limited per node (across its sockets), and another node is unaffected."""

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator

from marketplace.consumers import agent as agent_consumer
from marketplace.models import Assignment, Job, LogLine, Node
from marketplace.services.nodes import hash_token
from webapp.asgi import application

from .factories import JobFactory, NodeFactory, OfferFactory

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://testserver")


def _node(token: str) -> Node:
    return NodeFactory(token_hash=hash_token(token), status=Node.Status.OFFLINE)


def _assignment(node: Node) -> Assignment:
    offer = OfferFactory(node=node)
    return Assignment.objects.create(job=JobFactory(status=Job.Status.MATCHING), node=node, offer=offer,
                                     attempt=1, node_rank=0, gpus=1,
                                     price_per_gpu_hour=offer.price_per_gpu_hour,
                                     status=Assignment.Status.DISPATCHED)


async def _open(token: str) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, "/ws/agent/",
                                 headers=[ORIGIN, (b"authorization", f"Token {token}".encode())])
    assert (await comm.connect())[0]
    return comm


async def _replies(comm: WebsocketCommunicator, quiet_s: float = 1.0) -> list[dict]:
    out = []
    # receive_nothing waits without cancelling the application (receive_from's timeout does).
    while not await comm.receive_nothing(timeout=quiet_s):
        out.append(json.loads(await comm.receive_from()))
    return out


def _limited(replies: list[dict]) -> set:
    return {r["ref"] for r in replies if r.get("code") == "rate_limited"}


@pytest.fixture
def small_limits(monkeypatch):
    monkeypatch.setattr(agent_consumer, "RATE_BURST", 20.0)
    monkeypatch.setattr(agent_consumer, "RATE_PER_S", 0.1)
    monkeypatch.setattr(agent_consumer, "CONTROL_BURST", 3.0)
    monkeypatch.setattr(agent_consumer, "CONTROL_PER_S", 0.05)


def test_a_flooding_node_is_limited_per_node_and_another_is_not(small_limits):
    flooder, honest = _node("cmn_flooder"), _node("cmn_honest")
    mine = _assignment(honest)

    async def scenario():
        a1, a2 = await _open("cmn_flooder"), await _open("cmn_flooder")
        # Heartbeats: never limited before.
        for i in range(10):
            await a1.send_to(text_data=json.dumps({"type": "heartbeat", "id": f"hb{i}", "running": []}))
        # Each message names another assignment: one bucket per named assignment let all through.
        for i in range(30):
            await a1.send_to(text_data=json.dumps({"type": "log", "id": f"x{i}", "assignment": 10_000 + i,
                                                   "seq": 1, "lines": ["x"]}))
        flood = await _replies(a1)
        # The same node's second socket shares its allowance.
        await a2.send_to(text_data=json.dumps({"type": "heartbeat", "id": "hb-second", "running": []}))
        await a2.send_to(text_data=json.dumps({"type": "log", "id": "x-second", "assignment": 99_999,
                                               "seq": 1, "lines": ["x"]}))
        second = await _replies(a2)
        # Meanwhile another node is unaffected.
        b = await _open("cmn_honest")
        await b.send_to(text_data=json.dumps({"type": "heartbeat", "id": "b-hb", "running": []}))
        for seq in range(1, 6):
            await b.send_to(text_data=json.dumps({"type": "log", "id": f"b{seq}", "assignment": mine.pk,
                                                  "seq": seq, "lines": [f"line {seq}"]}))
        other = await _replies(b)
        for comm in (a1, a2, b):
            await comm.disconnect()
        return flood, second, other

    flood, second, other = asyncio.run(scenario())
    limited = _limited(flood)
    assert {f"hb{i}" for i in range(3, 10)} <= limited and not {"hb0", "hb1", "hb2"} & limited
    assert {f"x{i}" for i in range(20, 30)} <= limited  # 20 let through, then refused
    assert {f"x{i}" for i in range(20)}.isdisjoint(limited)
    assert {r["ref"] for r in flood if r.get("code") == "not_yours"} >= {f"x{i}" for i in range(20)}
    assert _limited(second) == {"hb-second", "x-second"}
    assert not _limited(other)
    acked = [i for r in other if r["type"] == "ack" for i in r["ids"]]
    assert acked == [f"b{seq}" for seq in range(1, 6)]
    assert list(LogLine.objects.filter(assignment=mine).values_list("seq", flat=True)) == [1, 2, 3, 4, 5]
    assert Node.objects.get(pk=flooder.pk).status == Node.Status.ONLINE  # its first heartbeats counted
