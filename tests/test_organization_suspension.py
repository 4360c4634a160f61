"""Suspension means off (issue 13, item 5), over the real ASGI stack and the Redis channel
layer: suspending a provider disconnects its connected agent and refuses it afterwards, its
offers leave search, its running work ends with the reason and resumes on another provider's
machine, and the suspended organization can add no node and submit no job. The staff API and
the admin action go through the same service."""

import asyncio
import json
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.urls import reverse

from marketplace.models import Assignment, AuditEvent, Job, Node, Offer, Organization
from marketplace.services import placement
from marketplace.services.jobs import job_submit
from marketplace.services.nodes import hash_token
from webapp.asgi import application

from .factories import JobFactory, NodeFactory, OfferFactory

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://testserver")
TOKEN = "cmn_carol_agent"


def _agent(token: str = TOKEN) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, "/ws/agent/",
                                 headers=[ORIGIN, (b"authorization", f"Token {token}".encode())])


@pytest.fixture
def world(provider_org, carol, dave_offer, healthcare, alice):
    node = NodeFactory(provider=provider_org, name="carol-box", token_hash=hash_token(TOKEN))
    offer = OfferFactory(node=node, price_per_gpu_hour="0.500000", gpus_reserved=1)  # cheaper than dave's
    job = JobFactory(owner=healthcare, status=Job.Status.RUNNING, attempt=1)
    running = Assignment.objects.create(job=job, node=node, offer=offer, attempt=1, node_rank=0, gpus=1,
                                        price_per_gpu_hour=offer.price_per_gpu_hour,
                                        status=Assignment.Status.RUNNING)
    return node, offer, job, running


def _search(api, alice) -> list[int]:
    return [o["id"] for o in api.as_user(alice).get("/api/v1/offers/").json()["results"]]


def test_suspending_a_provider_turns_it_off(api, admin_user, alice, carol, provider_org, dave_offer, world):
    node, offer, job, running = world
    assert offer.pk in _search(api, alice)

    staff = api.as_user(admin_user)

    async def scenario():
        agent = _agent()
        assert (await agent.connect())[0]
        response = await sync_to_async(staff.post)(
            f"/api/v1/organizations/{provider_org.pk}/suspend/", {"reason": "fraud under review"},
            format="json")
        received = []
        while True:  # the cancel of its assignment may come first; then the reason and the close
            out = await agent.receive_output(timeout=5)
            received.append(out)
            if out["type"] == "websocket.close":
                break
        again = _agent()
        reconnected, _ = await again.connect()
        return response, received, reconnected

    response, received, reconnected = asyncio.run(scenario())
    assert response.status_code == 200, response.content
    assert response.json() == {"id": provider_org.pk, "name": provider_org.name, "is_suspended": True}
    said = [json.loads(m["text"]) for m in received if m["type"] == "websocket.send"]
    assert {"type": "error", "code": "suspended"}.items() <= said[-1].items()
    assert "fraud under review" in said[-1]["message"]
    assert received[-1] == {"type": "websocket.close", "code": 4403}
    assert reconnected is False  # the token is refused at the handshake while suspended

    # Its offers are off the market, with the reason.
    offer.refresh_from_db()
    assert offer.status == Offer.Status.PAUSED and "fraud under review" in offer.status_reason
    assert offer.pk not in _search(api, alice) and dave_offer.pk in _search(api, alice)
    assert Node.objects.get(pk=node.pk).status == Node.Status.OFFLINE
    # Its running work ended with the reason; the job resumes on another provider's machine.
    running.refresh_from_db()
    assert running.status == Assignment.Status.CANCELLED and "fraud under review" in running.detail
    job.refresh_from_db()
    assert job.status == Job.Status.INTERRUPTED and node.pk in job.excluded_nodes
    assert job.events.filter(reason="node_removed").exists()
    [replacement] = placement.job_place(job_id=job.pk)
    assert replacement.node_id == dave_offer.node_id
    # It can add nothing: a node, an offer, a job.
    assert api.as_user(carol).post("/api/v1/nodes/", {
        "name": "new", "gpu_model": "RTX 4090", "gpu_count": 1, "cpu_cores": 8, "ram_gb": 32,
        "disk_gb": 100, "region": "EU-DE"}, format="json").status_code == 403
    assert api.as_user(carol).post(f"/api/v1/offers/{offer.pk}/resume/").status_code == 403
    event = AuditEvent.objects.get(action="organization.suspend", object_id=str(provider_org.pk))
    assert event.actor == admin_user and event.data["offers_paused"] == [offer.pk]
    assert event.data["assignments_stopped"] == 1


def test_a_heartbeat_on_its_way_does_not_bring_a_suspended_node_back(admin_user, provider_org, world):
    from marketplace.services.nodes import node_set_presence
    from marketplace.services.suspension import organization_suspend

    node, *_ = world
    organization_suspend(organization=provider_org, actor=admin_user, reason="audit")
    node_set_presence(node_id=node.pk, online=True)
    assert Node.objects.get(pk=node.pk).status == Node.Status.OFFLINE


def test_a_suspended_consumer_submits_no_job(api, admin_user, alice, healthcare, future):
    from marketplace.services.job_spec import JobSpec
    from marketplace.services.suspension import organization_suspend

    organization_suspend(organization=healthcare, actor=admin_user, reason="unpaid invoices")
    healthcare.refresh_from_db()
    response = api.as_user(alice).post("/api/v1/jobs/", {}, format="json")
    assert response.status_code == 403 and "suspended" in response.json()["detail"]
    with pytest.raises(Exception, match="suspended"):
        job_submit(owner=healthcare, spec=JobSpec(
            name="x", template="tabular-classifier", dataset="sample:breast-cancer", nodes=1, gpus_per_node=1,
            max_price_per_gpu_hour=Decimal("3"), budget=Decimal("10"), deadline=future), actor=alice)
    assert not Job.objects.filter(owner=healthcare).exists()


def test_only_staff_suspend_and_a_reason_is_required(api, carol, admin_user, provider_org):
    url = f"/api/v1/organizations/{provider_org.pk}/suspend/"
    assert api.as_user(None).post(url, {"reason": "x"}, format="json").status_code == 401
    assert api.as_user(carol).post(url, {"reason": "x"}, format="json").status_code == 403
    assert api.as_user(admin_user).post(url, {}, format="json").status_code == 400
    assert api.as_user(admin_user).post("/api/v1/organizations/999999/suspend/", {"reason": "x"},
                                        format="json").status_code == 404
    assert not Organization.objects.get(pk=provider_org.pk).is_suspended


def test_the_admin_action_suspends_and_lifts(client, admin_user, provider_org, world):
    node, offer, job, running = world
    client.force_login(admin_user)
    changelist = reverse("admin:marketplace_organization_changelist")
    client.post(changelist, {"action": "suspend_organizations", "_selected_action": [provider_org.pk]})
    provider_org.refresh_from_db()
    offer.refresh_from_db()
    running.refresh_from_db()
    assert provider_org.is_suspended and offer.status == Offer.Status.PAUSED
    assert running.status == Assignment.Status.CANCELLED
    assert AuditEvent.objects.filter(action="organization.suspend", actor=admin_user).exists()
    client.post(changelist, {"action": "unsuspend_organizations", "_selected_action": [provider_org.pk]})
    provider_org.refresh_from_db()
    assert not provider_org.is_suspended
    assert Offer.objects.get(pk=offer.pk).status == Offer.Status.PAUSED  # until the provider resumes it
    assert AuditEvent.objects.filter(action="organization.unsuspend").exists()
