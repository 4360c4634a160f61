import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.utils import timezone

from marketplace.errors import MarketError, NotFound, PermissionDenied
from marketplace.models import AuditEvent, Node, Offer
from marketplace.services.nodes import (
    NodeSpec,
    hash_token,
    node_by_token,
    node_create,
    node_rotate_token,
    node_set_presence,
    node_suspend,
    node_update,
    node_verify_compliance,
)
from marketplace.services.offers import OfferSpec, offer_create, offer_set_status, offer_update

from .factories import NodeFactory


def evidence() -> dict:
    return {"note": "Checked the audit report.",
            "document": ContentFile(b"SOC 2 report, checked.", name="report.pdf")}


SPEC = NodeSpec(name="fin-01", gpu_model="H100 80GB", gpu_count=8, gpu_memory_gb=None,
                cpu_cores=96, ram_gb=1024, disk_gb=8000, region="EU-FI",
                compliance=("gdpr", "iso27001"))


def test_node_create_returns_the_token_once_and_stores_only_its_hash(provider_org, carol):
    node, token = node_create(provider=provider_org, spec=SPEC, actor=carol)
    assert token.startswith("cmn_") and len(token) > 40
    assert node.token_hash == hash_token(token) and token not in node.token_hash
    assert node.gpu_memory_gb == 80  # from the catalogue when not given
    assert node.claimed_tags == ["gdpr", "iso27001"] and node.verified_tags == []
    assert node.status == Node.Status.PENDING
    assert node_by_token(token) == node
    assert AuditEvent.objects.filter(action="node.create", object_id=str(node.pk)).exists()


def test_rotating_the_token_revokes_the_old_one(provider_org, carol):
    node, old = node_create(provider=provider_org, spec=SPEC, actor=carol)
    new = node_rotate_token(node=node, actor=carol)
    assert node_by_token(new).pk == node.pk
    with pytest.raises(NotFound):
        node_by_token(old)


def test_consumers_cannot_register_nodes(healthcare):
    with pytest.raises(PermissionDenied):
        node_create(provider=healthcare, spec=SPEC)


@pytest.mark.parametrize(("change", "field"), [
    ({"gpu_model": "GTX 9999"}, "gpu_model"),
    ({"gpu_count": 0}, "gpu_count"),
    ({"region": "MARS-1"}, "region"),
    ({"compliance": ("pci",)}, "compliance"),
    ({"name": "x" * 81}, "name"),
    ({"gpu_memory_gb": 0}, "gpu_memory_gb"),
])
def test_node_bad_input(provider_org, change, field):
    with pytest.raises(MarketError) as err:
        node_create(provider=provider_org, spec=NodeSpec(**{**SPEC.__dict__, **change}))
    assert err.value.field == field
    assert not Node.objects.exists()


def test_cpu_node_has_no_gpu_memory(provider_org):
    node, _ = node_create(provider=provider_org, spec=NodeSpec(
        **{**SPEC.__dict__, "gpu_model": "cpu", "gpu_count": 2, "gpu_memory_gb": 16}))
    assert node.is_cpu and node.gpu_memory_gb == 0


def test_offer_copies_node_attributes_and_follows_node_changes(provider_org, carol):
    node, _ = node_create(provider=provider_org, spec=SPEC, actor=carol)
    offer = offer_create(provider=provider_org, node=node,
                         spec=OfferSpec(gpus_offered=4, price_per_gpu_hour=Decimal("2.5")))
    assert (offer.gpu_model, offer.region, offer.node_online) == ("H100 80GB", "EU-FI", False)
    node_verify_compliance(node=node, tags=["gdpr"], actor=carol, **evidence())
    node_set_presence(node_id=node.pk, online=True, heartbeat_at=timezone.now())
    offer.refresh_from_db()
    assert offer.compliance_tags == ["gdpr"] and offer.node_online
    node_update(node=Node.objects.get(pk=node.pk),
                spec=NodeSpec(**{**SPEC.__dict__, "region": "EU-SE", "compliance": ("iso27001",)}))
    offer.refresh_from_db()
    assert offer.region == "EU-SE"
    assert offer.compliance_tags == []  # a dropped claim loses its verification


def test_verifying_an_unclaimed_tag_is_refused(provider_org, admin_user):
    node, _ = node_create(provider=provider_org, spec=SPEC)
    with pytest.raises(MarketError):
        node_verify_compliance(node=node, tags=["hipaa"], actor=admin_user, **evidence())


def test_offers_cannot_list_more_gpus_than_the_node_has(provider_org):
    node, _ = node_create(provider=provider_org, spec=SPEC)
    offer_create(provider=provider_org, node=node,
                 spec=OfferSpec(gpus_offered=6, price_per_gpu_hour=Decimal("2")))
    with pytest.raises(MarketError) as err:
        offer_create(provider=provider_org, node=node,
                     spec=OfferSpec(gpus_offered=3, price_per_gpu_hour=Decimal("2")))
    assert err.value.field == "gpus_offered"
    assert Offer.objects.count() == 1


@pytest.mark.parametrize(("change", "field"), [
    ({"price_per_gpu_hour": Decimal("0")}, "price_per_gpu_hour"),
    ({"price_per_gpu_hour": Decimal("-1")}, "price_per_gpu_hour"),
    ({"price_per_gpu_hour": Decimal("1.0000001")}, "price_per_gpu_hour"),
    ({"gpus_offered": 0}, "gpus_offered"),
    ({"min_duration_hours": Decimal("0")}, "min_duration_hours"),
    ({"min_duration_hours": Decimal("4"), "max_duration_hours": Decimal("2")}, "max_duration_hours"),
    ({"available_until": timezone.now() - timedelta(hours=1)}, "available_until"),
])
def test_offer_bad_input(carol_node, provider_org, change, field):
    spec = OfferSpec(**{"gpus_offered": 2, "price_per_gpu_hour": Decimal("1"), **change})
    with pytest.raises(MarketError) as err:
        offer_create(provider=provider_org, node=carol_node, spec=spec)
    assert err.value.field == field
    assert not Offer.objects.exists()


def test_providers_cannot_touch_other_providers_offers(carol_offer, other_provider_org):
    with pytest.raises(PermissionDenied):
        offer_set_status(provider=other_provider_org, offer=carol_offer, status="paused")
    with pytest.raises(PermissionDenied):
        offer_update(provider=other_provider_org, offer=carol_offer,
                     spec=OfferSpec(gpus_offered=1, price_per_gpu_hour=Decimal("0.1")))
    carol_offer.refresh_from_db()
    assert carol_offer.status == "active" and carol_offer.price_per_gpu_hour == Decimal("1.5")


def test_suspending_a_node_pauses_its_offers_and_hides_it(carol_offer, admin_user):
    node_suspend(node=carol_offer.node, actor=admin_user, reason="fake GPUs")
    carol_offer.refresh_from_db()
    assert carol_offer.status == "paused" and not carol_offer.node_online
    node_set_presence(node_id=carol_offer.node_id, online=True)
    assert Node.objects.get(pk=carol_offer.node_id).status == Node.Status.SUSPENDED
    with pytest.raises(NotFound):
        node_by_token("cmn_test_anything")


@pytest.mark.django_db(transaction=True)
def test_concurrent_offers_never_overbook_a_node():
    node = NodeFactory(gpu_count=4)
    errors, barrier = [], threading.Barrier(2)

    def create():
        barrier.wait()
        try:
            offer_create(provider=node.provider, node=node,
                         spec=OfferSpec(gpus_offered=3, price_per_gpu_hour=Decimal("1")))
        except MarketError as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a racing thread is stuck (a lock never released?)"
    assert Offer.objects.filter(node=node).count() == 1
    assert len(errors) == 1


def test_verifying_asks_for_evidence_and_records_who_verified_what(provider_org, admin_user):
    spec = NodeSpec(**{**SPEC.__dict__, "compliance": ("hipaa", "gdpr")})
    node, _ = node_create(provider=provider_org, spec=spec)
    for missing in ({"note": "Checked it."[:5], "document": ContentFile(b"x", name="a.pdf")},
                    {"note": "Checked the HIPAA audit report.", "document": None},
                    {"note": "Checked the HIPAA audit report.", "document": ContentFile(b"", name="a.pdf")}):
        with pytest.raises(MarketError) as refused:
            node_verify_compliance(node=node, tags=["hipaa"], actor=admin_user, **missing)
        assert refused.value.field in ("note", "document")
    node.refresh_from_db()
    assert node.verified_tags == []
    node_verify_compliance(node=node, tags=["hipaa"], actor=admin_user,
                           note="Checked the HIPAA\x00 audit\u202e report, 2026.",
                           document=ContentFile(b"%PDF-1.4 report", name="../../etc/hipaa\x07.pdf"))
    evidence = node.compliance_evidence.get()
    assert evidence.tags == ["hipaa"] and evidence.verified_by == admin_user
    assert evidence.note == "Checked the HIPAA audit report, 2026."  # control characters removed
    assert evidence.document_name == "../../etc/hipaa.pdf"  # shown only; stored under a random name
    assert evidence.document.name.startswith("compliance/") and ".." not in evidence.document.name
    assert evidence.document.read() == b"%PDF-1.4 report"
    assert AuditEvent.objects.get(action="node.verify_compliance").data["evidence"] == evidence.pk
