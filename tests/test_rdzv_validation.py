"""Issue 13 item 1: the platform checks rank 0's rendezvous address before it sends the
job's other nodes there. The host must be the node's own (the address its agent socket
comes from, or the one its agent advertised in `hello`), the port within
AGENT_RDZV_PORT_MIN..MAX; otherwise rank 0's part is refused with the reason and the job
placed again without that node. Through the real ASGI agent socket."""

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator

from marketplace.models import Assignment, Job, Offer
from webapp.asgi import application

from .test_agent_socket import ORIGIN, _assignment, token_node

pytestmark = pytest.mark.django_db(transaction=True)
NODE_ADDR = "192.0.2.7"  # where the node's socket comes from


async def accepted(a: Assignment, rdzv: dict, hello: dict | None = None) -> list[dict]:
    comm = WebsocketCommunicator(application, "/ws/agent/", headers=[
        ORIGIN, (b"authorization", b"Token cmn_socket_test")])
    comm.scope["client"] = (NODE_ADDR, 40000)
    assert (await comm.connect())[0]
    replies = []
    if hello is not None:
        await comm.send_to(text_data=json.dumps({"type": "hello", "id": "h", "running": [a.pk], **hello}))
        replies.append(json.loads(await comm.receive_from(timeout=5)))
        while not await comm.receive_nothing(timeout=0.3):
            await comm.receive_from()
    await comm.send_to(text_data=json.dumps({"type": "assignment.accepted", "id": "1",
                                             "assignment": a.pk, "seq": 1, "rdzv": rdzv,
                                             "seen_hosts": ["203.0.113.9"]}))  # ignored
    replies.append(json.loads(await comm.receive_from(timeout=5)))
    await comm.disconnect()
    return replies


def refused(a: Assignment) -> str | None:
    a.refresh_from_db()
    if a.status != Assignment.Status.FAILED:
        return None
    job = Job.objects.get(pk=a.job_id)
    assert a.node_id in job.excluded_nodes  # placed again without that node
    return job.events.get(reason="assignment_rejected").message


def test_a_third_partys_host_is_refused_with_the_reason():
    a = _assignment(token_node())
    asyncio.run(accepted(a, {"host": "203.0.113.9", "port": 29500}))
    reason = refused(a)
    assert reason and "rendezvous refused" in reason and "203.0.113.9" in reason
    assert a.rdzv_host in ("", None)  # nothing the other nodes would be sent to


def test_a_port_outside_the_configured_range_is_refused(settings):
    settings.AGENT_RDZV_PORT_MIN, settings.AGENT_RDZV_PORT_MAX = 29000, 29999
    a = _assignment(token_node())
    asyncio.run(accepted(a, {"host": NODE_ADDR, "port": 22}))
    reason = refused(a)
    assert reason and "port 22 is outside 29000..29999" in reason


def test_the_nodes_own_or_advertised_address_and_a_port_in_range_are_accepted():
    a = _assignment(token_node())
    asyncio.run(accepted(a, {"host": NODE_ADDR, "port": 29500}))
    a.refresh_from_db()
    assert a.status == Assignment.Status.ACCEPTED and (a.rdzv_host, a.rdzv_port) == (NODE_ADDR, 29500)


def test_the_address_advertised_in_hello_is_the_nodes_too():
    # A CPU node: its hello's hardware is then not compared with a GPU offer.
    a = _assignment(token_node(gpu_model="cpu", gpu_memory_gb=0))
    Offer.objects.filter(pk=a.offer_id).update(gpu_model="cpu", gpu_memory_gb=0)
    asyncio.run(accepted(a, {"host": "10.8.0.2", "port": 29500}, hello={
        "advertise_addr": "10.8.0.2", "hardware": {"gpus": [], "gpu_count": 0, "cpu_cores": 2}}))
    a.refresh_from_db()
    assert a.status == Assignment.Status.ACCEPTED and a.rdzv_host == "10.8.0.2", \
        list(Job.objects.get(pk=a.job_id).events.values_list("message", flat=True))
