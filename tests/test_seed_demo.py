"""`manage.py seed_demo`: a realistic demo marketplace, safe to run twice; the examples of
examples/tasks already uploaded for alice and erin; the demo's own agents take them."""

import hashlib
import json
from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from django.urls import reverse

from marketplace import runtimes
from marketplace.models import AuditEvent, CodeBundle, Dataset, Job, Membership, Node, Offer, Organization
from marketplace.services.bundles import bundle_plain_path
from marketplace.services.nodes import node_set_presence
from marketplace.services.provider_runtime import node_runtime_report

from .api_support import job_body

pytestmark = pytest.mark.django_db

PRICE_BANDS = {  # tUSD / GPU-h, as the command promises
    "RTX 3090": (0.20, 0.35), "RTX 4090": (0.35, 0.70), "L40S": (0.80, 1.20),
    "A100 40GB": (1.00, 1.40), "A100 80GB": (1.30, 2.00), "H100 80GB": (2.00, 3.50),
}


def _counts() -> dict[str, int]:
    User = get_user_model()
    return {"users": User.objects.count(), "orgs": Organization.objects.count(),
            "memberships": Membership.objects.count(), "nodes": Node.objects.count(),
            "offers": Offer.objects.count(), "audit": AuditEvent.objects.count(),
            "verified_nodes": Node.objects.exclude(compliance_verified=0).count(),
            "bundles": CodeBundle.objects.count(), "datasets": Dataset.objects.count()}


@pytest.fixture
def seeded():
    out = StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def test_seed_creates_a_realistic_market(seeded):
    nodes = Node.objects.all()
    assert nodes.count() >= 40
    assert len(set(nodes.values_list("region", flat=True))) >= 8
    assert set(nodes.values_list("gpu_model", flat=True)) == set(PRICE_BANDS)
    assert Organization.objects.filter(kind="provider").count() >= 4
    assert nodes.filter(reliability__isnull=True).exists()  # some are new
    assert nodes.filter(reliability__isnull=False).exists()
    # Claims exist; some are verified (by the admin, audited), some still await it.
    assert nodes.exclude(compliance_verified=0).exists()
    assert nodes.exclude(compliance_claimed=0).filter(compliance_verified=0).exists()
    assert AuditEvent.objects.filter(action="node.verify_compliance").exists()
    offers = list(Offer.objects.all())
    assert offers
    for offer in offers:
        low, high = PRICE_BANDS[offer.gpu_model]
        assert low <= float(offer.price_per_gpu_hour) <= high, offer
        assert offer.status == Offer.Status.ACTIVE
    # No agent is connected: nothing pretends to be online.
    assert set(nodes.values_list("status", flat=True)) == {Node.Status.PENDING}
    assert not Offer.objects.filter(node_online=True).exists()
    assert not nodes.exclude(last_heartbeat_at=None).exists()


def test_seed_creates_the_demo_users_with_their_roles(seeded):
    for username in ("alice", "erin", "carol", "admin"):
        assert authenticate(username=username, password="demo-pass-123") is not None, username
    User = get_user_model()
    alice = User.objects.get(username="alice")
    assert alice.membership.organization.kind == Organization.Kind.CONSUMER
    assert alice.membership.organization.sector == Organization.Sector.HEALTHCARE
    erin = User.objects.get(username="erin")
    assert erin.membership.organization.sector == Organization.Sector.ENERGY
    carol = User.objects.get(username="carol")
    assert carol.membership.organization.kind == Organization.Kind.PROVIDER
    assert carol.membership.organization.nodes.exists()
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    assert not hasattr(admin, "membership")
    assert "demo-pass-123" in seeded and "alice" in seeded


def test_seed_is_idempotent(seeded):
    before = _counts()
    prices = list(Offer.objects.order_by("node__name", "id").values_list(
        "node__name", "price_per_gpu_hour"))
    hashes = dict(get_user_model().objects.values_list("username", "password"))
    out = StringIO()
    call_command("seed_demo", stdout=out)
    assert _counts() == before
    assert list(Offer.objects.order_by("node__name", "id").values_list(
        "node__name", "price_per_gpu_hour")) == prices
    assert dict(get_user_model().objects.values_list("username", "password")) == hashes
    assert "nothing new" in out.getvalue()


def test_seed_keeps_existing_data(db):
    """Run on a database that already has users: it adds, never replaces."""
    User = get_user_model()
    User.objects.create_user("alice", password="her-own-password-42")
    call_command("seed_demo", stdout=StringIO())
    assert authenticate(username="alice", password="her-own-password-42") is not None
    assert Node.objects.count() >= 40


def _org_of(username: str) -> Organization:
    return get_user_model().objects.get(username=username).membership.organization


def test_seed_uploads_the_example_bundles_and_their_data(seeded):
    """alice has the imaging classifier and its scans, erin the forecaster and its CSV: each
    bundle as stored is what it declares, and its data is what its task reads."""
    alice, erin = _org_of("alice"), _org_of("erin")
    imaging = CodeBundle.objects.get(owner=alice)
    forecaster = CodeBundle.objects.get(owner=erin)
    assert (imaging.name, imaging.entry, imaging.kind) == \
        ("lesion-classifier.zip", "task:LesionClassifier", "zip")
    assert (forecaster.name, forecaster.entry) == ("load-forecaster.zip", "task:LoadForecaster")
    for bundle in (imaging, forecaster):
        assert bundle.runtime == runtimes.latest_runtime()
        assert {"epochs", "batch_size", "checkpoint_every", "seed"} <= set(bundle.params_schema["properties"])
        with bundle_plain_path(bundle) as path, open(path, "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == bundle.sha256
    scans = Dataset.objects.get(owner=alice)
    assert (scans.name, scans.kind, scans.entries) == ("synthetic-scans.zip", "zip", 400)
    load = Dataset.objects.get(owner=erin)
    assert (load.name, load.kind, load.rows) == ("site-load.csv", "csv", 120 * 24)
    assert load.columns == ["timestamp", "load_kw", "temperature_c"]
    assert "lesion-classifier.zip" in seeded and "site-load.csv" in seeded


def test_a_demo_user_finds_the_example_on_the_job_form_and_submits_it(seeded, client):
    from .test_pages_jobs import form_data

    alice = get_user_model().objects.get(username="alice")
    org = _org_of("alice")
    bundle, dataset = CodeBundle.objects.get(owner=org), Dataset.objects.get(owner=org)
    client.force_login(alice)
    page = client.get(reverse("job_new")).content.decode()
    assert f'<option value="{bundle.pk}">lesion-classifier.zip' in page
    assert f'<option value="{dataset.pk}">synthetic-scans.zip' in page
    response = client.post(reverse("job_new"), form_data(
        name="Lesions v1", bundle=str(bundle.pk), dataset=str(dataset.pk), params=json.dumps({"epochs": 3}),
        gpu_models=["cpu"], min_gpu_memory_gb="0", regions="", nodes="1", gpus_per_node="1"))
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get()
    assert job.bundle_id == bundle.pk and job.dataset_id == dataset.pk
    # Validated against the bundle's schema, its defaults filled in.
    assert job.params["epochs"] == 3 and job.params["learning_rate"] == 0.01 and job.params["augment"] is True


def test_the_demos_own_agents_accept_custom_code_and_would_take_the_examples(seeded, tmp_path, api):
    """`make demo` registers its two local CPU nodes with demo_agents; once their agents say
    hello (online, in the runtime they report), a quote for a seeded bundle finds them."""
    call_command("demo_agents", "--write", str(tmp_path / "agents.json"), stdout=StringIO())
    local = Node.objects.filter(gpu_model="cpu")
    offers = Offer.objects.filter(node__in=local)
    assert local.count() == 2 and offers.count() == 2 and all(o.accepts_custom_code for o in offers)
    for node in local:  # what the agent's hello does
        node_runtime_report(node=node, runtime=runtimes.latest_runtime())
        node_set_presence(node_id=node.pk, online=True)
    for username in ("alice", "erin"):
        bundle = CodeBundle.objects.get(owner=_org_of(username))
        dataset = Dataset.objects.get(owner=_org_of(username))
        body = api.as_user(get_user_model().objects.get(username=username)).post(
            "/api/v1/jobs/quote/", job_body(template="", bundle=bundle.pk, dataset=str(dataset.pk),
                                            params={}, gpus_per_node=local[0].gpu_count,
                                            gpu_models=["cpu"]), format="json")
        assert body.status_code == 200, body.content
        quote = body.json()
        assert quote["feasible"] is True, quote["reasons"]
        assert {c["offer_id"] for c in quote["candidates"]} <= {o.pk for o in offers}


def test_demo_agents_opts_in_the_offers_of_an_older_demo_database(seeded, tmp_path):
    call_command("demo_agents", "--write", str(tmp_path / "agents.json"), stdout=StringIO())
    Offer.objects.filter(node__gpu_model="cpu").update(accepts_custom_code=False)  # as before bundles
    call_command("demo_agents", "--write", str(tmp_path / "agents.json"), stdout=StringIO())
    assert list(Offer.objects.filter(node__gpu_model="cpu").values_list("accepts_custom_code", flat=True)) \
        == [True, True]
