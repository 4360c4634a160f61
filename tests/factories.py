"""factory_boy factories for the domain. Offers copy their node's searchable attributes,
as the services do."""

from datetime import timedelta
from decimal import Decimal

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from marketplace.models import Assignment, Job, Membership, Node, Offer, Organization
from marketplace.services.nodes import hash_token


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")
    kind = Organization.Kind.CONSUMER
    sector = Organization.Sector.HEALTHCARE
    join_code = factory.Sequence(lambda n: f"join-{n}")


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "demo-pass-123")

    @factory.post_generation
    def organization(self, create, extracted, **kwargs):
        if create and extracted is not None:
            Membership.objects.create(user=self, organization=extracted,
                                      role=kwargs.get("role", Membership.Role.OWNER))
        if create:
            self.save()


class NodeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Node

    provider = factory.SubFactory(OrganizationFactory, kind=Organization.Kind.PROVIDER)
    name = factory.Sequence(lambda n: f"node-{n}")
    gpu_model = "A100 80GB"
    gpu_count = 8
    gpu_memory_gb = 80
    cpu_cores = 64
    ram_gb = 512
    disk_gb = 4000
    region = "EU-DE"
    status = Node.Status.ONLINE
    last_heartbeat_at = factory.LazyFunction(timezone.now)
    token_hash = factory.Sequence(lambda n: hash_token(f"cmn_test_{n}"))
    token_prefix = "cmn_test"


class OfferFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Offer

    node = factory.SubFactory(NodeFactory)
    gpus_offered = factory.LazyAttribute(lambda o: o.node.gpu_count)
    price_per_gpu_hour = Decimal("1.500000")
    available_from = factory.LazyFunction(lambda: timezone.now() - timedelta(days=1))
    provider = factory.LazyAttribute(lambda o: o.node.provider)
    gpu_model = factory.LazyAttribute(lambda o: o.node.gpu_model)
    gpu_memory_gb = factory.LazyAttribute(lambda o: o.node.gpu_memory_gb)
    region = factory.LazyAttribute(lambda o: o.node.region)
    compliance_verified = factory.LazyAttribute(lambda o: o.node.compliance_verified)
    reliability = factory.LazyAttribute(lambda o: o.node.reliability)
    node_online = factory.LazyAttribute(lambda o: o.node.status == Node.Status.ONLINE)


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Job

    owner = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"job {n}")
    template = "tabular-classifier"
    params = factory.LazyFunction(dict)
    dataset_ref = "sample:breast-cancer"
    nodes = 1
    gpus_per_node = 1
    max_price_per_gpu_hour = Decimal("3")
    budget = Decimal("100")
    deadline = factory.LazyFunction(lambda: timezone.now() + timedelta(days=2))
    status = Job.Status.SUBMITTED


def two_node_parts(job: Job, status: str) -> list[Assignment]:
    """Ranks 0 and 1 of the job's first placement, each on a node and offer of its own."""
    parts = []
    for rank in range(2):
        node = NodeFactory()
        parts.append(Assignment.objects.create(
            job=job, node=node, offer=OfferFactory(node=node), attempt=1, node_rank=rank, gpus=1,
            price_per_gpu_hour=Decimal("1"), status=status))
    return parts
