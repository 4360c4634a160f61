"""`python manage.py seed_demo`: a realistic, deterministic demo marketplace.

Idempotent: every organization, user, node and offer is looked up by its natural key
first, so a second run finds everything and writes nothing. Writes go through the
services (organization_create, node_create, node_verify_compliance, offer_create, and the
uploads service for the examples' code bundles and data: ../demo_examples.py).

The seeded nodes have no agent: they stay `pending` (never connected), so nothing
matches them until a real agent connects with the node's token (rotate it in the admin).
"""

import random
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from marketplace.models import Membership, Node, Offer, Organization
from marketplace.services.accounts import organization_create
from marketplace.services.nodes import NodeSpec, node_create, node_verify_compliance
from marketplace.services.offers import OfferSpec, offer_create

from ..demo_examples import EXAMPLES, seed_examples

User = get_user_model()

DEMO_PASSWORD = "demo-pass-123"  # demo only; printed at the end
SEED = 20250611

# Market-like on-demand prices, tUSD per GPU-hour.
PRICE_RANGE: dict[str, tuple[str, str]] = {
    "RTX 3090": ("0.20", "0.35"),
    "RTX 4090": ("0.35", "0.70"),
    "L40S": ("0.80", "1.20"),
    "A100 40GB": ("1.00", "1.40"),
    "A100 80GB": ("1.30", "2.00"),
    "H100 80GB": ("2.00", "3.50"),
}
# Per GPU: CPU cores, RAM GB, disk GB.
SHAPE: dict[str, tuple[int, int, int]] = {
    "RTX 3090": (4, 32, 1000),
    "RTX 4090": (6, 64, 1000),
    "L40S": (8, 96, 1920),
    "A100 40GB": (12, 64, 1920),
    "A100 80GB": (12, 128, 1920),
    "H100 80GB": (14, 256, 3840),
}
SLUG = {"RTX 3090": "3090", "RTX 4090": "4090", "L40S": "l40s", "A100 40GB": "a100-40",
        "A100 80GB": "a100-80", "H100 80GB": "h100"}


@dataclass(frozen=True)
class Provider:
    name: str
    sector: str
    about: str
    prefix: str
    regions: tuple[str, ...]
    claims: tuple[str, ...]
    verified: tuple[str, ...]  # what the platform admin has checked
    fleet: tuple[tuple[str, int, tuple[int, ...]], ...]  # (model, machines, GPU counts)
    price_band: tuple[float, float]  # where in the model's price range it sells
    reliability_floor: float
    bandwidth: tuple[int, ...]
    max_hours: int | None = None


R = Organization.Sector
PROVIDERS: tuple[Provider, ...] = (
    Provider("Nordlys Green Compute", R.OTHER,
             "Hydro-powered data centre in northern Sweden and Finland.", "nordlys",
             ("EU-SE", "EU-FI"), ("gdpr", "iso27001"), ("gdpr", "iso27001"),
             (("H100 80GB", 3, (8,)), ("A100 80GB", 4, (4, 8)), ("L40S", 3, (4, 8))),
             (0.3, 0.8), 0.97, (10_000, 25_000)),
    Provider("Rheinland University GPU Lab", R.RESEARCH,
             "University research cluster renting out idle nights and semester breaks.",
             "rhein-lab", ("EU-DE",), ("gdpr",), (),
             (("A100 40GB", 4, (4, 8)), ("RTX 3090", 4, (2, 4))),
             (0.0, 0.5), 0.90, (10_000,), max_hours=72),
    Provider("Pixelforge Render Farm", R.OTHER,
             "VFX render farm selling capacity between productions.", "pixelforge",
             ("US-CA", "US-TX", "EU-NL"), ("soc2",), ("soc2",),
             (("RTX 4090", 8, (2, 4, 8)), ("L40S", 3, (4, 8))),
             (0.2, 0.9), 0.93, (1_000, 10_000)),
    Provider("Second Wind Compute", R.OTHER,
             "Former GPU mining operation, now renting its cards for AI training.",
             "secondwind", ("US-TX", "SA-BR", "EU-FI"), (), (),
             (("RTX 3090", 6, (4, 6, 8)), ("RTX 4090", 4, (4, 8))),
             (0.0, 0.4), 0.85, (500, 1_000)),
    Provider("Meridian Secure Cloud", R.HEALTHCARE,
             "HIPAA-ready colocation for clinical workloads.", "meridian",
             ("US-VA",), ("hipaa", "soc2", "iso27001"), ("hipaa", "soc2"),
             (("H100 80GB", 3, (8,)), ("A100 80GB", 3, (8,))),
             (0.6, 1.0), 0.98, (25_000,)),
    Provider("Sakura Edge Datacenter", R.OTHER,
             "Regional edge data centres in Tokyo and Singapore.", "sakura",
             ("AP-JP", "AP-SG"), ("iso27001",), ("iso27001",),
             (("A100 40GB", 3, (4, 8)), ("L40S", 3, (4,)), ("RTX 4090", 2, (4,))),
             (0.4, 0.9), 0.95, (10_000,)),
    Provider("Lumière Paris HPC", R.RESEARCH,
             "Public research computing centre near Paris.", "lumiere",
             ("EU-FR",), ("gdpr", "iso27001", "hipaa"), ("gdpr",),
             (("H100 80GB", 2, (8,)), ("A100 80GB", 2, (4,))),
             (0.2, 0.6), 0.96, (10_000, 25_000)),
)
CAROL_ORG = "Nordlys Green Compute"
CONSUMERS = (
    ("Medisight Diagnostics", R.HEALTHCARE, "alice", "Alice", "Ng"),
    ("GridCast Energy", R.ENERGY, "erin", "Erin", "Lindqvist"),
)


@dataclass(frozen=True)
class OfferPlan:
    gpus: int
    price: Decimal
    min_hours: Decimal
    max_hours: Decimal | None


@dataclass(frozen=True)
class NodePlan:
    provider: Provider
    spec: NodeSpec
    reliability: Decimal | None
    offers: tuple[OfferPlan, ...]


def _money(value: float) -> Decimal:
    return Decimal(str(round(value, 2)))


def plan_nodes(rng: random.Random) -> list[NodePlan]:
    """The whole fleet, decided up front so that the random draws never depend on what the
    database already holds (a re-run plans the same nodes and finds them)."""
    plans = []
    for p in PROVIDERS:
        for model, machines, counts in p.fleet:
            lo, hi = (Decimal(x) for x in PRICE_RANGE[model])
            cores, ram, disk = SHAPE[model]
            for i in range(1, machines + 1):
                gpus = rng.choice(counts)
                region = rng.choice(p.regions)
                price = _money(float(lo) + float(hi - lo) * rng.uniform(*p.price_band))
                rel = None if rng.random() < 0.2 else Decimal(
                    str(round(rng.uniform(p.reliability_floor, 0.999), 4)))
                spec = NodeSpec(
                    name=f"{p.prefix}-{SLUG[model]}-{i:02d}", gpu_model=model, gpu_count=gpus,
                    gpu_memory_gb=None, cpu_cores=cores * gpus, ram_gb=ram * gpus,
                    disk_gb=disk * gpus, region=region, compliance=p.claims,
                    bandwidth_mbps=rng.choice(p.bandwidth),
                )
                max_h = Decimal(p.max_hours) if p.max_hours else None
                if gpus >= 8 and rng.random() < 0.4:
                    # Half the machine on demand, half cheaper for reservations of a day+.
                    offers = (OfferPlan(gpus // 2, price, Decimal("0.25"), max_h),
                              OfferPlan(gpus // 2, max(lo, _money(float(price) * 0.9)),
                                        Decimal("24"), max_h))
                else:
                    offers = (OfferPlan(gpus, price, Decimal("0.25"), max_h),)
                plans.append(NodePlan(p, spec, rel, offers))
    return plans


class Command(BaseCommand):
    help = "Create demo organizations, users, nodes and offers (idempotent, deterministic)."

    def handle(self, *args, **options):
        self.stdout.write(f"Seeding demo data; every demo user's password is {DEMO_PASSWORD} "
                          "(demo only).")
        with transaction.atomic():
            stats = self._seed()
        self._summary(stats)

    # --- helpers -----------------------------------------------------------------------
    def _user(self, username: str, first: str, last: str, *, superuser: bool = False):
        user = User.objects.filter(username=username).first()
        if user is not None:
            return user, False
        email = f"{username}@demo.computemesh.example"
        if superuser:
            user = User.objects.create_superuser(username, email, DEMO_PASSWORD,
                                                 first_name=first, last_name=last)
        else:
            user = User.objects.create_user(username, email, DEMO_PASSWORD,
                                            first_name=first, last_name=last)
        return user, True

    def _org(self, name: str, kind: str, sector: str, owner=None) -> tuple[Organization, bool]:
        org = Organization.objects.filter(name=name).first()
        if org is not None:
            return org, False
        return organization_create(name=name, kind=kind, sector=sector, owner=owner), True

    @staticmethod
    def _member(user, org: Organization) -> None:
        if not Membership.objects.filter(user=user).exists():
            Membership.objects.create(user=user, organization=org, role=Membership.Role.OWNER)

    def _seed(self) -> Counter:
        stats: Counter = Counter()
        admin, created = self._user("admin", "Ada", "Admin", superuser=True)
        stats["users"] += created

        for org_name, sector, username, first, last in CONSUMERS:
            user, created = self._user(username, first, last)
            stats["users"] += created
            org, created = self._org(org_name, Organization.Kind.CONSUMER, sector)
            stats["organizations"] += created
            self._member(user, org)

        carol, created = self._user("carol", "Carol", "Sørensen")
        stats["users"] += created
        providers: dict[str, Organization] = {}
        for p in PROVIDERS:
            org, created = self._org(p.name, Organization.Kind.PROVIDER, p.sector)
            stats["organizations"] += created
            if created and p.verified:
                # The platform has checked this provider's business and claims.
                Organization.objects.filter(pk=org.pk).update(is_verified=True)
            providers[p.name] = org
        self._member(carol, providers[CAROL_ORG])

        for plan in plan_nodes(random.Random(SEED)):
            org = providers[plan.provider.name]
            node = Node.objects.filter(provider=org, name=plan.spec.name).first()
            if node is None:
                node, _token = node_create(provider=org, spec=plan.spec, actor=admin)
                # Seeded history stands in for 30 days of measured delivery; NULL is "new".
                Node.objects.filter(pk=node.pk).update(reliability=plan.reliability)
                node.refresh_from_db()
                stats["nodes"] += 1
            pending = [t for t in plan.provider.verified if t not in node.verified_tags]
            if pending:
                node = node_verify_compliance(
                    node=node, tags=pending, actor=admin, note="Demo data: seeded as verified.",
                    document=ContentFile(b"Demo evidence (seed_demo).\n", name="demo-evidence.txt"))
                stats["verifications"] += 1
            if not Offer.objects.filter(node=node).exists():
                for o in plan.offers:
                    offer_create(provider=org, node=node, spec=OfferSpec(
                        gpus_offered=o.gpus, price_per_gpu_hour=o.price,
                        available_from=timezone.now() - timedelta(minutes=1),
                        min_duration_hours=o.min_hours, max_duration_hours=o.max_hours))
                    stats["offers"] += 1
        examples, self.notes = seed_examples()
        stats.update(examples)
        return stats

    def _summary(self, created: Counter) -> None:
        nodes = Node.objects.filter(provider__name__in=[p.name for p in PROVIDERS])
        offers = Offer.objects.filter(node__in=nodes)
        out = self.stdout
        made = ", ".join(f"{v} {k}" for k, v in sorted(created.items()) if v) or "nothing new"
        out.write(self.style.SUCCESS(f"Demo data ready (created this run: {made})."))
        out.write(f"  {len(PROVIDERS)} providers, {nodes.count()} nodes, {offers.count()} offers")
        regions = Counter(nodes.values_list("region", flat=True))
        out.write("  regions: " + ", ".join(f"{r} {n}" for r, n in sorted(regions.items())))
        for model in PRICE_RANGE:
            prices = sorted(offers.filter(gpu_model=model)
                            .values_list("price_per_gpu_hour", flat=True))
            if prices:
                out.write(f"  {model:<10} {len(prices):>3} offers, "
                          f"{prices[0]:.2f}–{prices[-1]:.2f} tUSD / GPU-h")
        out.write("  Nodes have no agent yet (status pending); connect one with the node's "
                  "token (rotate it in the admin) to bring it online.")
        for example in EXAMPLES:
            out.write(f"  {example.username}'s own code: bundle {example.bundle_name} with dataset "
                      f"{example.data_name} (examples/tasks/{example.folder})")
        for note in getattr(self, "notes", []):
            out.write(self.style.WARNING(f"  {note}"))
        out.write("Demo logins (password for all: demo-pass-123 — demo only):")
        out.write("  alice  consumer, Medisight Diagnostics (healthcare)")
        out.write("  erin   consumer, GridCast Energy (energy)")
        out.write(f"  carol  provider, {CAROL_ORG}")
        out.write("  admin  platform superuser (/admin/)")
