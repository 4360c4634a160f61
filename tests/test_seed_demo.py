"""`manage.py seed_demo`: a realistic demo marketplace, safe to run twice."""

from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command

from marketplace.models import AuditEvent, Membership, Node, Offer, Organization

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
            "verified_nodes": Node.objects.exclude(compliance_verified=0).count()}


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
