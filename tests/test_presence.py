"""Heartbeats and hellos in batches (services/presence.py, consumers/batches.py): each
heartbeat applied as `agent_heartbeat` would, the idle majority in a constant number of
queries; each hello as `agent_hello` would, a batch in one transaction where one hello's
refusal or failure leaves the others applied; over the real socket and directly."""

import asyncio
import json
from datetime import timedelta

import pytest
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from marketplace.models import Assignment, Job, Node, Offer
from marketplace.services import execution, presence
from marketplace.services.agent_protocol import AgentRefused
from marketplace.services.nodes import hash_token
from marketplace.services.presence import Beat, Hello, heartbeats_record, hellos_record
from webapp.asgi import application

from .factories import JobFactory, NodeFactory, OfferFactory

pytestmark = pytest.mark.django_db(transaction=True)
LONG_AGO = timezone.now() - timedelta(hours=1)


def dispatched(node: Node, *, at=None) -> Assignment:
    job = JobFactory(status=Job.Status.MATCHING)
    offer = OfferFactory(node=node)
    return Assignment.objects.create(job=job, node=node, offer=offer, attempt=1, node_rank=0, gpus=1,
                                     price_per_gpu_hour=offer.price_per_gpu_hour,
                                     status=Assignment.Status.DISPATCHED, dispatched_at=at or LONG_AGO)


def test_a_batch_applies_each_heartbeat_as_alone(django_assert_max_num_queries):
    idle = [NodeFactory(status=Node.Status.ONLINE, last_heartbeat_at=LONG_AGO) for _ in range(40)]
    offline = NodeFactory(status=Node.Status.OFFLINE, last_heartbeat_at=LONG_AGO)
    busy = NodeFactory(status=Node.Status.ONLINE, last_heartbeat_at=LONG_AGO)
    missed = dispatched(busy)  # its start was never acted on: the heartbeat resends it
    beats = [Beat(node=n, running=[], unacked=[], steps=None) for n in [*idle, offline, busy]]
    out = heartbeats_record(beats)

    assert out[:41] == [[] for _ in range(41)]
    assert [m["type"] for m in out[41]] == ["assignment.start"] and out[41][0]["assignment"] == missed.pk
    for node in [*idle, offline, busy]:
        node.refresh_from_db()
        assert node.status == Node.Status.ONLINE and node.last_heartbeat_at > LONG_AGO, node
    # The idle online nodes cost one UPDATE and one SELECT together, however many there are.
    more = [NodeFactory(status=Node.Status.ONLINE, last_heartbeat_at=LONG_AGO) for _ in range(60)]
    with django_assert_max_num_queries(4):
        out = heartbeats_record([Beat(node=n, running=[], unacked=None, steps=None) for n in more])
    assert out == [[]] * 60


def test_a_suspended_node_is_not_brought_back_by_a_batch():
    node = NodeFactory(status=Node.Status.SUSPENDED, last_heartbeat_at=LONG_AGO)
    suspended_org = NodeFactory(status=Node.Status.ONLINE, last_heartbeat_at=LONG_AGO)
    suspended_org.provider.is_suspended = True
    suspended_org.provider.save(update_fields=["is_suspended"])
    heartbeats_record([Beat(node=n, running=[], unacked=[], steps=None) for n in (node, suspended_org)])
    node.refresh_from_db()
    suspended_org.refresh_from_db()
    assert node.status == Node.Status.SUSPENDED and node.last_heartbeat_at == LONG_AGO
    assert suspended_org.last_heartbeat_at == LONG_AGO  # node_set_presence refuses it, as before


def test_steps_are_recorded_and_a_running_assignment_is_reconciled():
    node = NodeFactory(status=Node.Status.ONLINE)
    running = dispatched(node)
    Assignment.objects.filter(pk=running.pk).update(status=Assignment.Status.RUNNING)
    gone = 999_999  # the agent runs something the platform does not know: it is told to stop
    out = heartbeats_record([Beat(node=node, running=[running.pk, gone], unacked=[],
                                  steps={str(running.pk): 42})])
    running.refresh_from_db()
    assert running.last_step == 42
    assert [(m["type"], m["assignment"]) for m in out[0]] == [("assignment.cancel", gone)]


def test_heartbeats_over_many_sockets_are_answered_and_recorded():
    tokens = [f"cmn_presence_{i}" for i in range(12)]
    nodes = [NodeFactory(token_hash=hash_token(t), status=Node.Status.OFFLINE, last_heartbeat_at=LONG_AGO)
             for t in tokens]
    missed = dispatched(nodes[0])

    async def agent(token):
        comm = WebsocketCommunicator(application, "/ws/agent/", headers=[
            (b"origin", b"http://testserver"), (b"authorization", f"Token {token}".encode())])
        assert (await comm.connect())[0]
        await comm.send_to(text_data=json.dumps({"type": "heartbeat", "id": "b1", "ack": True,
                                                 "running": [], "unacked": []}))
        replies = []
        while not replies or replies[-1]["type"] != "heartbeat.ack":
            replies.append(json.loads(await comm.receive_from(timeout=10)))
        await comm.disconnect()
        return replies

    async def all_agents():
        return await asyncio.gather(*(agent(t) for t in tokens))

    replies = asyncio.run(all_agents())
    assert [m["type"] for m in replies[0]] == ["assignment.start", "heartbeat.ack"]
    assert replies[0][0]["assignment"] == missed.pk
    assert all(r == [{"type": "heartbeat.ack", "ref": "b1"}] for r in replies[1:]), replies
    assert Node.objects.filter(pk__in=[n.pk for n in nodes], status=Node.Status.ONLINE,
                               last_heartbeat_at__gt=LONG_AGO).count() == 12


def test_a_batch_of_hellos_applies_each_as_alone_and_isolates_failures(monkeypatch, settings):
    settings.ALLOW_AGENT_FAULTS = False
    nodes = [NodeFactory(status=Node.Status.OFFLINE, last_heartbeat_at=LONG_AGO) for _ in range(6)]
    missed = dispatched(nodes[5])  # its agent says hello without it: the start is sent again
    real = presence.agent_hello

    def hello(*, node, hello):  # the fourth node's hello breaks after writing: rolled back alone
        out = real(node=node, hello=hello)
        if node.pk == nodes[3].pk:
            raise RuntimeError("broken after its writes")
        return out

    monkeypatch.setattr(presence, "agent_hello", hello)
    monkeypatch.setattr(presence, "_idle", lambda message: False)  # every hello one by one here
    messages = [{"type": "hello", "agent_version": "t", "running": [], "unacked": []} for _ in nodes]
    messages[1]["faults"] = {"crash_at_step": 3}  # test-only faults: refused
    batch = [Hello(node=n, message=m) for n, m in zip(nodes, messages, strict=True)]
    out = hellos_record(batch[::-1])[::-1]  # applied in node id order, answered in the batch's

    assert isinstance(out[1], AgentRefused) and out[1].code == "faults_refused"
    assert isinstance(out[3], RuntimeError)
    for i in (0, 2, 4, 5):
        welcome = {k: out[i][0][k] for k in ("type", "node", "name", "assignments")}
        assert welcome == {"type": "welcome", "node": nodes[i].pk, "name": nodes[i].name,
                           "assignments": [missed.pk] if i == 5 else []}, out[i]
    assert [m["type"] for m in out[5][1:]] == ["assignment.start"]
    online = set(Node.objects.filter(pk__in=[n.pk for n in nodes], status=Node.Status.ONLINE)
                 .values_list("pk", flat=True))
    assert online == {nodes[i].pk for i in (0, 2, 4, 5)}


def test_hellos_over_many_sockets_are_welcomed_in_shared_transactions(monkeypatch):
    tokens = [f"cmn_hello_{i}" for i in range(16)]
    nodes = [NodeFactory(token_hash=hash_token(t), status=Node.Status.OFFLINE) for t in tokens]
    batches = []
    real = presence.hellos_record

    def record(hellos):
        batches.append(len(hellos))
        return real(hellos)

    monkeypatch.setattr("marketplace.consumers.batches.hellos_record", record)

    async def agent(token, comm):
        await comm.send_to(text_data=json.dumps({"type": "hello", "agent_version": "t", "running": [],
                                                 "unacked": []}))
        welcome = json.loads(await comm.receive_from(timeout=20))
        await comm.disconnect()
        return welcome

    async def all_agents():
        comms = [WebsocketCommunicator(application, "/ws/agent/", headers=[
            (b"origin", b"http://testserver"), (b"authorization", f"Token {t}".encode())]) for t in tokens]
        for comm in comms:
            assert (await comm.connect())[0]
        return await asyncio.gather(*(agent(t, c) for t, c in zip(tokens, comms, strict=True)))

    welcomes = asyncio.run(all_agents())
    assert sorted(w["node"] for w in welcomes if w["type"] == "welcome") == sorted(n.pk for n in nodes)
    assert sum(batches) == 16 and len(batches) < 16, batches  # some hellos shared a transaction
    assert Node.objects.filter(pk__in=[n.pk for n in nodes], status=Node.Status.ONLINE).count() == 16


def _state(node: Node) -> tuple:
    node.refresh_from_db()
    offers = sorted((o.gpus_offered, o.status, o.status_reason, o.node_online, o.region, o.gpu_model)
                    for o in node.offers.all())
    return (node.status, node.benchmark_tflops, node.agent_version, node.hardware,
            node.hardware_at is not None, node.runtime, node.peer_firewall, node.advertise_addr,
            node.uptimes.filter(online_until=None).count(), offers)


def test_idle_hellos_in_a_batch_leave_what_each_alone_leaves(django_assert_max_num_queries):
    """The set-based path of a batch of idle hellos against agent_hello, on twin nodes."""
    eight_a100 = {"gpus": [{"name": "NVIDIA A100-SXM4-80GB", "memory_gb": 80}] * 8, "cpu_cores": 64,
                  "ram_gb": 512, "cuda": "12.4"}
    cases = [  # (node's status, the hello's fields beyond its type)
        (Node.Status.OFFLINE, {"agent_version": "1.2", "benchmark_tflops": 61.25, "hardware": eight_a100}),
        (Node.Status.OFFLINE, {"agent_version": "1.2", "hardware": {"gpus": []}}),  # lists 8 it lacks
        (Node.Status.ONLINE, {"hardware": eight_a100, "runtime": "cm-torch-2.13-py3.11",
                              "sandbox": {"peer_firewall": True}, "advertise_addr": "10.0.0.7"}),
        (Node.Status.OFFLINE, {"hardware": "not a report", "advertise_addr": "a host name"}),
    ]
    twins = []
    for status, _ in cases:
        pair = []
        for _ in range(2):
            node = NodeFactory(status=status, last_heartbeat_at=LONG_AGO)
            OfferFactory(node=node, gpus_offered=8)
            pair.append(node)
        twins.append(pair)
    for (_, fields), (_, alone) in zip(cases, twins, strict=True):
        execution.agent_hello(node=alone, hello={"type": "hello", **fields})
    batch = [Hello(node=node, message={"type": "hello", **fields})
             for (_, fields), (node, _) in zip(cases, twins, strict=True)]
    out = hellos_record(batch)

    for (node, alone), messages in zip(twins, out, strict=True):
        assert [m["type"] for m in messages] == ["welcome"] and messages[0]["node"] == node.pk
        assert _state(node) == _state(alone), node
    assert twins[1][0].offers.get().status == Offer.Status.PAUSED  # taken off: it lacks the GPUs

    # However many nodes come online, the batch costs the same handful of statements.
    fleet = [NodeFactory(status=Node.Status.OFFLINE, last_heartbeat_at=LONG_AGO) for _ in range(25)]
    for node in fleet:
        OfferFactory(node=node, gpus_offered=8)
    with django_assert_max_num_queries(12):
        out = hellos_record([Hello(node=n, message={"type": "hello", "hardware": eight_a100}) for n in fleet])
    assert all([m["type"] for m in messages] == ["welcome"] for messages in out)
    assert Offer.objects.filter(node__in=fleet, node_online=True, status=Offer.Status.ACTIVE).count() == 25


def test_when_the_set_based_path_fails_each_idle_hello_is_applied_alone(monkeypatch):
    nodes = [NodeFactory(status=Node.Status.OFFLINE, last_heartbeat_at=LONG_AGO) for _ in range(3)]

    def broken(nodes, *, when):
        raise RuntimeError("the set-based path breaks half way")

    monkeypatch.setattr(presence, "nodes_hardware_check", broken)
    out = hellos_record([Hello(node=n, message={"type": "hello"}) for n in nodes])
    assert [[m["type"] for m in messages] for messages in out] == [["welcome"]] * 3
    assert Node.objects.filter(pk__in=[n.pk for n in nodes], status=Node.Status.ONLINE).count() == 3
