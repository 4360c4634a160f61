"""Verified compliance tags belong to the machine an auditor looked at (issue 13, item 6): a
node whose region, GPU model or provider changes drops them to unverified, with an audit
event, and its offers leave a search for those tags."""

import pytest
from django.core.files.base import ContentFile

from marketplace import catalogue
from marketplace.models import AuditEvent, Node, Offer
from marketplace.services.nodes import NodeSpec, node_update, node_verify_compliance

pytestmark = pytest.mark.django_db
URL = "/api/v1/nodes/"


@pytest.fixture
def verified_node(carol_node, carol_offer, admin_user):
    Node.objects.filter(pk=carol_node.pk).update(
        compliance_claimed=catalogue.compliance_mask(["gdpr", "iso27001"]))
    carol_node.refresh_from_db()
    return node_verify_compliance(node=carol_node, tags=["gdpr", "iso27001"], actor=admin_user,
                                  document=ContentFile(b"ISO 27001 certificate", name="iso.pdf"),
                                  note="Certificate and GDPR DPA checked.")


def _found(api, alice, tag: str) -> list[int]:
    return [o["id"] for o in api.as_user(alice).get("/api/v1/offers/", {"compliance": tag}).json()["results"]]


@pytest.mark.parametrize(("field", "value"), [("region", "EU-FR"), ("gpu_model", "H100 80GB")])
def test_a_machine_change_drops_the_verified_tags(api, carol, alice, verified_node, carol_offer,
                                                  field, value):
    assert _found(api, alice, "gdpr") == [carol_offer.pk]
    response = api.as_user(carol).patch(f"{URL}{verified_node.pk}/", {field: value}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["compliance_verified"] == []
    assert response.json()["compliance_claimed"] == ["gdpr", "iso27001"]  # still claimed
    node = Node.objects.get(pk=verified_node.pk)
    assert node.compliance_verified == 0 and getattr(node, field) == value
    assert Offer.objects.get(pk=carol_offer.pk).compliance_verified == 0
    assert _found(api, alice, "gdpr") == []
    event = AuditEvent.objects.get(action="node.compliance_unverified", object_id=str(node.pk))
    assert event.actor == carol and event.data["tags"] == ["gdpr", "iso27001"]
    assert event.data["changes"][field][1] == value and field in event.message


def test_other_changes_keep_the_tags(api, carol, alice, verified_node, carol_offer):
    response = api.as_user(carol).patch(f"{URL}{verified_node.pk}/", {"name": "renamed", "ram_gb": 1024},
                                        format="json")
    assert response.status_code == 200, response.content
    assert response.json()["compliance_verified"] == ["gdpr", "iso27001"]
    assert _found(api, alice, "gdpr") == [carol_offer.pk]
    assert not AuditEvent.objects.filter(action="node.compliance_unverified").exists()


def test_a_provider_change_drops_the_tags(verified_node, other_provider_org, admin_user):
    node = Node.objects.get(pk=verified_node.pk)
    node.provider = other_provider_org  # a machine handed to another operator
    spec = NodeSpec(name=node.name, gpu_model=node.gpu_model, gpu_count=node.gpu_count,
                    gpu_memory_gb=node.gpu_memory_gb, cpu_cores=node.cpu_cores, ram_gb=node.ram_gb,
                    disk_gb=node.disk_gb, region=node.region, compliance=tuple(node.claimed_tags))
    node_update(node=node, spec=spec, actor=admin_user)
    node.refresh_from_db()
    assert node.provider == other_provider_org and node.compliance_verified == 0
    assert AuditEvent.objects.filter(action="node.compliance_unverified", object_id=str(node.pk)).exists()
