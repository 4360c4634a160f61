"""Register this computer's two demo CPU nodes and give each a fresh agent token.

Used by `make demo` (webapp/devserver.py) to start two local provider agents. The nodes
are CPU nodes and are listed as such: this computer has no GPU to offer. Their offers
accept consumers' own code (code bundles, run in the agent's sandbox: bubblewrap), so that
the demo's example bundles (seed_demo) run on them.
"""

import json
import os
from decimal import Decimal
from pathlib import Path

from django.core.management.base import BaseCommand
from django.db import transaction

from marketplace.models import Node, Offer, Organization
from marketplace.services.accounts import organization_create
from marketplace.services.nodes import NodeSpec, node_create, node_rotate_token
from marketplace.services.offers import OfferSpec, offer_create, offer_update

ORG = "This computer (demo CPU agents)"


def opt_in(org: Organization, offer: Offer) -> None:
    offer_update(provider=org, offer=offer, spec=OfferSpec(
        gpus_offered=offer.gpus_offered, price_per_gpu_hour=offer.price_per_gpu_hour,
        available_from=offer.available_from, available_until=offer.available_until,
        min_duration_hours=offer.min_duration_hours, max_duration_hours=offer.max_duration_hours,
        accepts_custom_code=True))


class Command(BaseCommand):
    help = "Ensure two local CPU demo nodes exist and write fresh agent tokens to a JSON file."

    def add_arguments(self, parser):
        parser.add_argument("--write", required=True, help="where to write the tokens (JSON)")
        parser.add_argument("--count", type=int, default=2)

    def handle(self, *args, write, count, **options):
        slots = max(1, min(2, (os.cpu_count() or 2)))
        with transaction.atomic():
            org = Organization.objects.filter(name=ORG).first() or organization_create(
                name=ORG, kind=Organization.Kind.PROVIDER, sector=Organization.Sector.OTHER)
            agents = []
            for i in range(count):
                name = f"local-cpu-{i + 1}"
                node = Node.objects.filter(provider=org, name=name).first()
                if node is None:
                    node, token = node_create(provider=org, spec=NodeSpec(
                        name=name, gpu_model="cpu", gpu_count=slots, gpu_memory_gb=None,
                        cpu_cores=os.cpu_count() or 1, ram_gb=4, disk_gb=10, region="EU-DE"))
                    offer_create(provider=org, node=node, spec=OfferSpec(
                        gpus_offered=slots, price_per_gpu_hour=Decimal("0.02"),
                        accepts_custom_code=True))
                else:
                    token = node_rotate_token(node=node)
                    for offer in Offer.objects.filter(node=node, accepts_custom_code=False):
                        opt_in(org, offer)  # a demo database made before bundles existed
                agents.append({"name": name, "node": node.pk, "token": token})
        path = Path(write)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(agents, indent=2))
        path.chmod(0o600)
        self.stdout.write(f"{len(agents)} local CPU demo nodes ready; tokens in {path}")
