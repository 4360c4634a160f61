"""Django admin: every page loads for staff, search works, actions go through services."""

from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.authtoken.models import Token

from marketplace.models import AuditEvent, Job, JobEvent, Membership, Node, Offer, Organization
from marketplace.services.jobs import job_cancel

from .factories import JobFactory, NodeFactory, OfferFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def world(alice, carol, carol_node, carol_offer, healthcare):
    job = JobFactory(owner=healthcare, created_by=alice, name="sepsis risk")
    JobEvent.objects.create(job=job, from_status="draft", to_status="submitted",
                            reason="submitted", message="Submitted by alice")
    AuditEvent.objects.create(action="node.create", object_type="node",
                              object_id=str(carol_node.pk), message="Registered")
    return {"job": job, "node": carol_node, "offer": carol_offer, "org": healthcare,
            "membership": Membership.objects.get(user=alice)}


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _action(client, model: str, action: str, objs) -> object:
    return client.post(reverse(f"admin:marketplace_{model}_changelist"),
                       {"action": action, "_selected_action": [o.pk for o in objs]},
                       follow=True)


# --- Pages ---------------------------------------------------------------------------
@pytest.mark.parametrize("model,key,add_status", [
    ("organization", "org", 200),
    ("membership", "membership", 200),
    ("node", "node", 200),
    ("offer", "offer", 200),
    ("job", "job", 403),  # consumers submit jobs; the admin only acts on them
    ("jobevent", None, 403),
    ("auditevent", None, 403),
])
def test_changelist_add_and_change_pages_load(staff, world, model, key, add_status):
    changelist = staff.get(reverse(f"admin:marketplace_{model}_changelist"))
    assert changelist.status_code == 200
    assert changelist.context["cl"].result_count >= 1
    assert staff.get(reverse(f"admin:marketplace_{model}_add")).status_code == add_status
    obj = world[key] if key else changelist.context["cl"].result_list[0]
    change = staff.get(reverse(f"admin:marketplace_{model}_change", args=[obj.pk]))
    assert change.status_code == 200


def test_dataset_and_token_admin_pages_load(staff, alice, healthcare):
    from marketplace.models import Dataset

    ds = Dataset.objects.create(owner=healthcare, created_by=alice, name="icu vitals",
                                file="datasets/x.csv", size_bytes=2048, rows=10,
                                columns=["a", "b"], sha256="ab" * 32)
    Token.objects.create(user=alice)
    assert staff.get(reverse("admin:marketplace_dataset_changelist")).status_code == 200
    assert staff.get(reverse("admin:marketplace_dataset_change", args=[ds.pk])).status_code == 200
    assert staff.get(reverse("admin:authtoken_tokenproxy_changelist")).status_code == 200


def test_node_pages_never_show_the_token_hash_and_show_tags(staff, world):
    node = world["node"]
    Node.objects.filter(pk=node.pk).update(compliance_claimed=0b11, compliance_verified=0b01)
    page = staff.get(reverse("admin:marketplace_node_change", args=[node.pk])).content.decode()
    assert node.token_hash not in page
    listing = staff.get(reverse("admin:marketplace_node_changelist")).content.decode()
    assert node.token_hash not in listing
    assert "hipaa, gdpr" in listing


def test_offer_list_shows_money_with_units(staff, world):
    page = staff.get(reverse("admin:marketplace_offer_changelist")).content.decode()
    assert "1.50 tUSD / GPU-h" in page


def test_job_change_page_is_read_only(staff, world):
    job = world["job"]
    url = reverse("admin:marketplace_job_change", args=[job.pk])
    page = staff.get(url)
    assert 'name="status"' not in page.content.decode()
    assert "Submitted by alice" in page.content.decode()  # the timeline inline
    staff.post(url, {"status": "completed", "name": "renamed"})
    job.refresh_from_db()
    assert (job.status, job.name) == (Job.Status.SUBMITTED, "sepsis risk")


def test_search_finds_by_name(staff, world, dave_node, dave_offer):
    response = staff.get(reverse("admin:marketplace_node_changelist"), {"q": "carol-a1"})
    assert list(response.context["cl"].result_list) == [world["node"]]
    response = staff.get(reverse("admin:marketplace_job_changelist"), {"q": "sepsis"})
    assert list(response.context["cl"].result_list) == [world["job"]]
    response = staff.get(reverse("admin:marketplace_offer_changelist"), {"q": "Render Farm"})
    assert [o.node_id for o in response.context["cl"].result_list] == [dave_node.pk]


def test_list_filters_from_the_catalogue(staff, world, dave_offer):
    response = staff.get(reverse("admin:marketplace_offer_changelist"),
                         {"gpu_model": "RTX 4090"})
    assert list(response.context["cl"].result_list) == [dave_offer]


def test_non_staff_are_redirected_to_login(client, alice):
    client.force_login(alice)
    response = client.get(reverse("admin:marketplace_node_changelist"))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_anonymous_is_redirected_to_login(client, db):
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302


# --- Writes through services ----------------------------------------------------------
def test_add_node_goes_through_the_service_and_shows_the_token_once(staff, provider_org):
    response = staff.post(reverse("admin:marketplace_node_add"), {
        "provider": provider_org.pk, "name": "nordic-h100", "gpu_model": "H100 80GB",
        "gpu_count": 8, "gpu_memory_gb": "", "cpu_cores": 112, "ram_gb": 2048,
        "disk_gb": 30000, "region": "EU-SE", "compliance": ["gdpr"],
    }, follow=True)
    node = Node.objects.get(name="nordic-h100")
    assert node.gpu_memory_gb == 80  # the service's default for the model
    assert node.claimed_tags == ["gdpr"] and node.verified_tags == []
    assert node.status == Node.Status.PENDING
    token_messages = [m for m in _messages(response) if "cmn_" in m]
    assert len(token_messages) == 1
    assert AuditEvent.objects.filter(action="node.create", object_id=str(node.pk)).exists()


def test_add_node_with_bad_input_is_a_form_error(staff, provider_org, healthcare):
    url = reverse("admin:marketplace_node_add")
    data = {"provider": provider_org.pk, "name": "bad", "gpu_model": "RTX 4090",
            "gpu_count": 0, "cpu_cores": 8, "ram_gb": 64, "disk_gb": 100, "region": "EU-DE"}
    response = staff.post(url, data)
    assert response.status_code == 200
    assert "gpu_count" in response.context["adminform"].form.errors
    # A consumer organization cannot own nodes.
    response = staff.post(url, {**data, "gpu_count": 1, "provider": healthcare.pk})
    assert "provider" in response.context["adminform"].form.errors
    assert not Node.objects.filter(name="bad").exists()


def test_add_offer_goes_through_the_service(staff, carol_node):
    Offer.objects.filter(node=carol_node).delete()
    response = staff.post(reverse("admin:marketplace_offer_add"), {
        "node": carol_node.pk, "gpus_offered": 4, "price_per_gpu_hour": "1.85",
        "min_duration_hours": "0.25",
    })
    assert response.status_code == 302
    offer = Offer.objects.get(node=carol_node)
    # The service copied the node's searchable attributes onto the offer.
    assert (offer.gpu_model, offer.region, offer.provider_id) == (
        "A100 80GB", "EU-DE", carol_node.provider_id)
    too_many = staff.post(reverse("admin:marketplace_offer_add"), {
        "node": carol_node.pk, "gpus_offered": 5, "price_per_gpu_hour": "1.85",
        "min_duration_hours": "0.25"})
    assert "gpus_offered" in too_many.context["adminform"].form.errors
    assert Offer.objects.filter(node=carol_node).count() == 1


def test_add_organization_goes_through_the_service(staff, db):
    response = staff.post(reverse("admin:marketplace_organization_add"),
                          {"name": "Helio Grid", "kind": "consumer", "sector": "energy"})
    assert response.status_code == 302
    org = Organization.objects.get(name="Helio Grid")
    assert org.slug == "helio-grid" and org.join_code


# --- Actions -------------------------------------------------------------------------
def test_suspend_action_suspends_pauses_offers_and_audits(staff, world, admin_user):
    node, offer = world["node"], world["offer"]
    response = _action(staff, "node", "suspend_nodes", [node])
    node.refresh_from_db()
    offer.refresh_from_db()
    assert node.status == Node.Status.SUSPENDED
    assert offer.status == Offer.Status.PAUSED and offer.node_online is False
    assert AuditEvent.objects.filter(action="node.suspend", object_id=str(node.pk),
                                     actor=admin_user).exists()
    assert any("Suspended 1 node" in m for m in _messages(response))


def test_unsuspend_action_lifts_the_suspension(staff, world, admin_user):
    node = world["node"]
    _action(staff, "node", "suspend_nodes", [node])
    _action(staff, "node", "unsuspend_nodes", [node])
    node.refresh_from_db()
    assert node.status == Node.Status.OFFLINE
    assert AuditEvent.objects.filter(action="node.unsuspend", object_id=str(node.pk)).exists()


def test_verify_action_asks_for_evidence_then_verifies_every_claimed_tag(staff, world, admin_user):
    node, offer = world["node"], world["offer"]
    Node.objects.filter(pk=node.pk).update(compliance_claimed=0b0011, compliance_verified=0)
    asked = _action(staff, "node", "verify_claimed_compliance", [node])
    page = asked.content.decode()
    assert "Evidence document" in page and "What you checked" in page
    assert 'enctype="multipart/form-data"' in page
    node.refresh_from_db()
    assert node.verified_tags == []  # one click verifies nothing
    url = reverse("admin:marketplace_node_changelist")
    form = {"action": "verify_claimed_compliance", "_selected_action": [node.pk], "apply": "1"}
    refused = staff.post(url, {**form, "note": "Checked the report."})  # no document
    assert refused.status_code == 200 and "This field is required" in refused.content.decode()
    node.refresh_from_db()
    assert node.verified_tags == []
    done = staff.post(url, {**form, "note": "HIPAA and GDPR audit by Acme, valid to 2027.",
                            "document": SimpleUploadedFile("audit.pdf", b"%PDF-1.4 audit")}, follow=True)
    assert "Verified on the evidence given" in done.content.decode()
    node.refresh_from_db()
    offer.refresh_from_db()
    assert node.verified_tags == ["hipaa", "gdpr"]
    assert offer.compliance_tags == ["hipaa", "gdpr"]  # the search table follows
    evidence = node.compliance_evidence.get()
    assert evidence.verified_by == admin_user and evidence.tags == ["hipaa", "gdpr"]
    assert evidence.document_name == "audit.pdf" and "Acme" in evidence.note
    change = staff.get(reverse("admin:marketplace_node_change", args=[node.pk])).content.decode()
    download = reverse("admin:marketplace_node_evidence", args=[evidence.pk])
    assert download in change and "audit.pdf" in change
    assert b"".join(staff.get(download).streaming_content) == b"%PDF-1.4 audit"
    assert AuditEvent.objects.filter(action="node.verify_compliance",
                                     object_id=str(node.pk), actor=admin_user).exists()


def test_rotate_token_action_shows_a_new_token(staff, world):
    node = world["node"]
    old = node.token_hash
    response = _action(staff, "node", "rotate_agent_tokens", [node])
    node.refresh_from_db()
    assert node.token_hash != old
    assert any("cmn_" in m for m in _messages(response))


def test_pause_and_resume_offer_actions(staff, world):
    offer = world["offer"]
    _action(staff, "offer", "pause_offers", [offer])
    offer.refresh_from_db()
    assert offer.status == Offer.Status.PAUSED
    _action(staff, "offer", "resume_offers", [offer])
    offer.refresh_from_db()
    assert offer.status == Offer.Status.ACTIVE


def test_resume_on_a_suspended_node_is_refused_with_a_message(staff, world):
    node, offer = world["node"], world["offer"]
    _action(staff, "node", "suspend_nodes", [node])
    response = _action(staff, "offer", "resume_offers", [offer])
    assert response.status_code == 200
    offer.refresh_from_db()
    assert offer.status == Offer.Status.PAUSED
    assert any("suspended" in m for m in _messages(response))


def test_cancel_action_cancels_through_the_state_machine(staff, world, admin_user):
    job = world["job"]
    _action(staff, "job", "cancel_jobs", [job])
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    event = job.events.order_by("-id").first()
    assert (event.to_status, event.reason, event.actor) == ("cancelled", "cancelled_by_admin",
                                                            admin_user)


def test_cancel_action_on_an_illegal_job_reports_and_changes_nothing(staff, world, healthcare):
    done = JobFactory(owner=healthcare, status=Job.Status.COMPLETED)
    live = world["job"]
    response = _action(staff, "job", "cancel_jobs", [done, live])
    assert response.status_code == 200
    done.refresh_from_db()
    live.refresh_from_db()
    assert done.status == Job.Status.COMPLETED
    assert not done.events.exists()
    assert live.status == Job.Status.CANCELLED  # the legal one in the batch still went
    assert any(f"Job #{done.pk}" in m and "cannot" in m for m in _messages(response))


def test_cancel_action_on_already_cancelled_job(staff, world, alice):
    job = world["job"]
    job_cancel(job=job, actor=alice)
    events = job.events.count()
    response = _action(staff, "job", "cancel_jobs", [job])
    assert response.status_code == 200
    assert job.events.count() == events
    assert any("Not cancelled" in m for m in _messages(response))


def test_admin_changelists_use_a_constant_number_of_queries(staff, world, provider_org,
                                                             django_assert_max_num_queries):
    for i in range(30):
        node = NodeFactory(provider=provider_org, name=f"bulk-{i}")
        OfferFactory(node=node, price_per_gpu_hour=Decimal("0.5"))
    for model in ("node", "offer", "job", "membership", "auditevent"):
        with django_assert_max_num_queries(12):
            assert staff.get(reverse(f"admin:marketplace_{model}_changelist")).status_code == 200
