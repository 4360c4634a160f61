"""Claimed hardware is checked (issue 12, item 12): a node's agent reports the machine in
`hello`; an offer that lists more (fewer GPUs of its model, another model, less memory per
GPU) leaves the market with the reason, shown to the provider and audited — when the node
connects (over the real agent socket) and when it accepts an assignment. Before, the
report was stored nowhere and the offer stayed in search."""

import asyncio
import json

import pytest
from django.urls import reverse

from marketplace.models import Assignment, AuditEvent, Job, Node, Offer
from marketplace.services.offers import OfferSpec, offer_set_status, offer_update

from .factories import JobFactory, OfferFactory, UserFactory
from .test_agent_socket import connect, token_node

pytestmark = pytest.mark.django_db(transaction=True)
TOKEN = "cmn_claims_test"


def h100s(n: int, memory: float = 79, name: str = "NVIDIA H100 80GB HBM3") -> dict:
    return {"gpus": [{"index": i, "name": name, "memory_gb": memory} for i in range(n)], "gpu_count": n,
            "gpu_model": name, "cpu_cores": 64, "ram_gb": 512}


async def _session(messages: list[dict]) -> list[dict]:
    comm = connect(TOKEN)
    assert (await comm.connect())[0]
    replies = []
    for m in messages:
        await comm.send_to(text_data=json.dumps(m))
        replies.append(json.loads(await comm.receive_from(timeout=10)))
    await comm.disconnect()
    return replies


def hello(hardware: dict | None) -> dict:
    out = {"type": "hello", "id": "h1", "agent_version": "0.1.0", "benchmark_tflops": 50.0,
           "running": [], "unacked": [], "faults": {}}
    if hardware is not None:
        out["hardware"] = hardware
    return out


@pytest.fixture
def h100_node():
    node = token_node(token=TOKEN, gpu_model="H100 80GB", gpu_count=8, gpu_memory_gb=80)
    return node, OfferFactory(node=node, gpus_offered=8)


def _searchable(api, offer: Offer) -> bool:
    ids = {o["id"] for o in api.get("/api/v1/offers/?gpu_model=H100 80GB&page_size=100").json()["results"]}
    return offer.pk in ids


def test_a_node_whose_hello_claims_less_than_its_offer_leaves_search_with_the_reason(api, client, h100_node):
    node, offer = h100_node
    assert _searchable(api, offer)

    replies = asyncio.run(_session([hello(h100s(2))]))  # 8× H100 listed, 2 in the machine

    assert replies[0]["type"] == "welcome"  # the node itself stays connected
    offer.refresh_from_db()
    assert offer.status == Offer.Status.PAUSED
    assert "lists 8 H100 80GB GPUs; the agent reports 2" in offer.status_reason
    assert not _searchable(api, offer)
    audit = AuditEvent.objects.get(action="offer.claims_mismatch", object_id=str(offer.pk))
    assert audit.data["node"] == node.pk and "reports 2" in audit.message
    node.refresh_from_db()
    assert node.hardware["gpu_count"] == 2 and node.hardware_at is not None
    # The provider sees why on its offers page, and cannot put it back as it is.
    owner = UserFactory(username="frank", organization=node.provider)
    client.force_login(owner)
    page = client.get(reverse("provider_offers")).content.decode()
    assert 'data-testid="offer-status-reason"' in page and "the agent reports 2" in page
    with pytest.raises(Exception, match="cannot go back on the market"):
        offer_set_status(provider=node.provider, offer=offer, status=Offer.Status.ACTIVE)
    # Listing what the machine has, it can.
    offer_update(provider=node.provider, offer=offer,
                 spec=OfferSpec(gpus_offered=2, price_per_gpu_hour=offer.price_per_gpu_hour))
    offer_set_status(provider=node.provider, offer=offer, status=Offer.Status.ACTIVE)
    offer.refresh_from_db()
    assert offer.status == Offer.Status.ACTIVE and offer.status_reason == ""


@pytest.mark.parametrize(("hardware", "why"), [
    (h100s(8, name="NVIDIA A100-SXM4-80GB"), "lists H100 80GB GPUs; the agent reports NVIDIA A100-SXM4-80GB"),
    (h100s(8, memory=39, name="NVIDIA H100 PCIe"), "the agent reports 0 with that much (the least: 39 GB)"),
    ({}, "reported no hardware"),
    (None, "reported no hardware"),  # an agent that does not say cannot dodge the check
])
def test_another_model_less_memory_or_no_report_is_a_mismatch(h100_node, hardware, why):
    _, offer = h100_node
    asyncio.run(_session([hello(hardware)]))
    offer.refresh_from_db()
    assert offer.status == Offer.Status.PAUSED and why in offer.status_reason


def test_an_honest_node_keeps_its_offer_and_a_cpu_node_is_not_compared(h100_node):
    node, offer = h100_node
    asyncio.run(_session([hello(h100s(8))]))
    offer.refresh_from_db()
    assert offer.status == Offer.Status.ACTIVE
    assert not AuditEvent.objects.filter(action="offer.claims_mismatch").exists()
    Node.objects.filter(pk=node.pk).update(gpu_model="cpu", gpu_memory_gb=0)
    Offer.objects.filter(pk=offer.pk).update(gpu_model="cpu", gpu_memory_gb=0)
    asyncio.run(_session([hello({"gpus": [], "gpu_count": 0, "cpu_cores": 2})]))
    offer.refresh_from_db()
    assert offer.status == Offer.Status.ACTIVE


def test_an_offer_raised_while_the_node_is_connected_leaves_the_market_at_once(h100_node):
    node, offer = h100_node
    Offer.objects.filter(pk=offer.pk).update(gpus_offered=2)
    asyncio.run(_session([hello(h100s(2))]))
    offer.refresh_from_db()
    assert offer.status == Offer.Status.ACTIVE
    offer = offer_update(provider=node.provider, offer=offer,
                         spec=OfferSpec(gpus_offered=8, price_per_gpu_hour=offer.price_per_gpu_hour))
    assert offer.status == Offer.Status.PAUSED and "when the offer was changed" in offer.status_reason


def test_a_node_that_reports_less_before_it_accepts_does_not_run_the_assignment(h100_node):
    node, offer = h100_node
    asyncio.run(_session([hello(h100s(8))]))  # honest when placed
    job = JobFactory(status=Job.Status.MATCHING, attempt=1, gpus_per_node=8)
    Offer.objects.filter(pk=offer.pk).update(gpus_reserved=8)
    a = Assignment.objects.create(job=job, node=node, offer=offer, attempt=1, node_rank=0, gpus=8,
                                  price_per_gpu_hour=offer.price_per_gpu_hour,
                                  status=Assignment.Status.DISPATCHED)

    # The agent comes back on a smaller machine and accepts the assignment placed on 8 GPUs.
    asyncio.run(_session([hello(h100s(2)),
                          {"type": "assignment.accepted", "id": "1", "assignment": a.pk, "seq": 1,
                           "rdzv": {"host": "10.0.0.5", "port": 29500}}]))

    a.refresh_from_db(), offer.refresh_from_db(), job.refresh_from_db()
    assert a.status == Assignment.Status.FAILED and "does not match its offer" in a.detail
    assert offer.status == Offer.Status.PAUSED and "the agent reports 2" in offer.status_reason
    assert offer.gpus_reserved == 0 and node.pk in job.excluded_nodes
    assert job.status in (Job.Status.INTERRUPTED, Job.Status.MATCHING)
    assert AuditEvent.objects.filter(action="offer.claims_mismatch", object_id=str(offer.pk)).count() == 2


def test_the_hello_s_cuda_and_driver_versions_reach_the_offers_list(client, h100_node):
    """Issue 18: the CUDA runtime and the NVIDIA driver an agent reports are stored with the
    node and shown in the offers list; anything that is not a version (markup, control
    characters) is dropped, not shown."""
    node, _ = h100_node
    asyncio.run(_session([hello({**h100s(8), "cuda": "12.4", "driver": "550.54.15"})]))
    node.refresh_from_db()
    assert (node.hardware["cuda"], node.hardware["driver"]) == ("12.4", "550.54.15")
    page = client.get(reverse("offers") + "?online=false").content.decode()
    assert '<span class="nowrap">CUDA 12.4</span> · <span class="nowrap">driver 550.54.15</span>' in page
    asyncio.run(_session([hello({**h100s(8), "cuda": "<b>12</b>", "driver": "550\x07.1"})]))
    node.refresh_from_db()
    assert "cuda" not in node.hardware and "driver" not in node.hardware
    page = client.get(reverse("offers") + "?online=false").content.decode()
    assert "CUDA and driver not reported yet" in page


@pytest.mark.parametrize(("text", "version"), [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
     "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)", "535.104.05"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  (dvs-builder@U16)",
     "550.54.15"),
    ("", None),
])
def test_the_agent_reads_the_driver_version_the_kernel_module_reports(text, version):
    from workers.agent.hardware import driver_in_proc
    assert driver_in_proc(text) == version
