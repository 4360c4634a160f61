"""Providers' nodes and the offers they list (the search indexes with them)."""

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q

from .. import catalogue
from .accounts import Organization
from .common import MONEY


class Node(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for its agent"
        ONLINE = "online", "Online"
        OFFLINE = "offline", "Offline"
        SUSPENDED = "suspended", "Suspended by an admin"

    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="nodes")
    name = models.CharField(max_length=80)
    gpu_model = models.CharField(max_length=32, choices=[(m, m) for m in catalogue.GPU_MODELS])
    gpu_count = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(64)],
        help_text="GPUs in the machine; for a CPU node, its training slots.")
    gpu_memory_gb = models.PositiveSmallIntegerField(help_text="Memory per GPU, GB.")
    cpu_cores = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    ram_gb = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    disk_gb = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    bandwidth_mbps = models.PositiveIntegerField(null=True, blank=True)
    region = models.CharField(max_length=8, choices=sorted(catalogue.REGIONS.items()))
    compliance_claimed = models.PositiveIntegerField(default=0, help_text="Bit mask of tags.")
    compliance_verified = models.PositiveIntegerField(default=0, help_text="Bit mask of tags.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    benchmark_tflops = models.DecimalField(max_digits=10, decimal_places=3, null=True,
                                           blank=True, help_text="Measured matmul TFLOP/s.")
    agent_version = models.CharField(max_length=32, blank=True)
    # The provider runtime its agent's last `hello` named (workers/runtimes.json): what a
    # code bundle's `runtime` is matched against.
    runtime = models.CharField(max_length=64, blank=True)
    # Its agent's last `hello` said it can confine a multi-node sandbox to the job's peers
    # (root, nftables, cgroup v2: workers/agent/peer_firewall.py): multi-node code bundles
    # are placed only on such nodes.
    peer_firewall = models.BooleanField(default=False)
    # The address its agent's last `hello` advertised to other nodes (an IP literal, or ""):
    # sent to the job's other nodes as a peer their firewalled sandboxes may reach.
    advertise_addr = models.CharField(max_length=45, blank=True)
    # What the agent's last `hello` said the machine has (validated, services/claims.py) and
    # when: compared with the node's offers on connect and on every accepted assignment.
    hardware = models.JSONField(default=dict, blank=True)
    hardware_at = models.DateTimeField(null=True, blank=True)
    # Share of assignments delivered over 30 days; NULL means too little history ("new").
    reliability = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    # What `reliability` was computed from (services/reputation.py): each component and its
    # sample size, or why the node is still new.
    reliability_detail = models.JSONField(default=dict, blank=True)
    reliability_at = models.DateTimeField(null=True, blank=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_prefix = models.CharField(max_length=12, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "name"], name="node_name_unique"),
            models.CheckConstraint(condition=Q(gpu_count__gte=1), name="node_gpu_count_gte_1"),
            models.CheckConstraint(condition=Q(cpu_cores__gte=1), name="node_cpu_cores_gte_1"),
            models.CheckConstraint(condition=Q(gpu_model="cpu") | Q(gpu_memory_gb__gte=1),
                                   name="node_gpu_memory_positive"),
            models.CheckConstraint(
                condition=Q(reliability__isnull=True) | Q(reliability__gte=0, reliability__lte=1),
                name="node_reliability_0_1"),
        ]
        indexes = [models.Index(fields=["status", "last_heartbeat_at"], name="node_status_heartbeat")]

    def __str__(self) -> str:
        return f"{self.name} ({self.gpu_count}× {self.gpu_model}, {self.region})"

    @property
    def is_cpu(self) -> bool:
        return self.gpu_model == catalogue.CPU

    @property
    def claimed_tags(self) -> list[str]:
        return catalogue.compliance_tags(self.compliance_claimed)

    @property
    def verified_tags(self) -> list[str]:
        return catalogue.compliance_tags(self.compliance_verified)


SEARCH_COLUMNS = ["price_per_gpu_hour", "gpu_model", "gpu_memory_gb", "region", "compliance_verified",
                  "reliability", "node_online", "gpus_offered", "gpus_reserved", "provider_stake"]


def _covering(*keys: str) -> list[str]:
    return [c for c in SEARCH_COLUMNS if c not in keys]


class PostgresOnlyIndex(models.Index):
    """An index built on PostgreSQL only: the embedded SQLite demo holds a few dozen offers
    and SQLite cannot express NULLS LAST in an index."""

    def deconstruct(self):
        # Its path in the migrations (0003, 0010): where the package exports it.
        _path, args, kwargs = super().deconstruct()
        return "marketplace.models.PostgresOnlyIndex", args, kwargs

    def create_sql(self, model, schema_editor, using="", **kwargs):
        if schema_editor.connection.vendor != "postgresql":
            return "SELECT 1"
        return super().create_sql(model, schema_editor, using=using, **kwargs)

    def remove_sql(self, model, schema_editor, **kwargs):
        if schema_editor.connection.vendor != "postgresql":
            return "SELECT 1"
        return super().remove_sql(model, schema_editor, **kwargs)


class NodeRegistrationCode(models.Model):
    """A one-time code that lets `computemesh-agent register` create a node for the provider
    organization that asked for it (the Add a machine page): short-lived, used once, and
    stored as its SHA-256 only."""

    provider = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="registration_codes")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                   related_name="+")
    code_hash = models.CharField(max_length=64, unique=True, editable=False)
    region = models.CharField(max_length=8, choices=sorted(catalogue.REGIONS.items()))
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    node = models.OneToOneField("Node", on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="registration_code")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"registration code of {self.provider_id} ({'used' if self.used_at else 'unused'})"


class Offer(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"

    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="offers")
    gpus_offered = models.PositiveSmallIntegerField()
    gpus_reserved = models.PositiveSmallIntegerField(default=0)
    price_per_gpu_hour = models.DecimalField(**MONEY)
    available_from = models.DateTimeField()
    available_until = models.DateTimeField(null=True, blank=True)
    min_duration_hours = models.DecimalField(max_digits=8, decimal_places=2, default=Decimal("0.25"))
    max_duration_hours = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ACTIVE)
    # Why the platform took the offer off the market (its node's agent reported less hardware
    # than it lists: services/claims.py); empty when the provider paused it, or it is active.
    status_reason = models.CharField(max_length=500, blank=True)
    # The provider agrees to run consumers' own code (code bundles) in its agent's sandbox.
    accepts_custom_code = models.BooleanField(default=False)

    # Copies of the node's searchable attributes, kept in step by the node services, so
    # that the public search is one table with covering indexes (see bench/offer_search.py).
    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="offers")
    gpu_model = models.CharField(max_length=32)
    gpu_memory_gb = models.PositiveSmallIntegerField()
    region = models.CharField(max_length=8)
    compliance_verified = models.PositiveIntegerField(default=0)
    reliability = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    node_online = models.BooleanField(default=False)
    # The provider's stake (active + pending withdrawal) on the stake contract, kept in step
    # by the stake indexer (services/staking.py).
    provider_stake = models.DecimalField(**MONEY, default=0)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["price_per_gpu_hour", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(price_per_gpu_hour__gt=0), name="offer_price_positive"),
            models.CheckConstraint(condition=Q(gpus_offered__gte=1), name="offer_gpus_gte_1"),
            models.CheckConstraint(condition=Q(gpus_reserved__lte=F("gpus_offered")),
                                   name="offer_reserved_lte_offered"),
            models.CheckConstraint(condition=Q(min_duration_hours__gt=0),
                                   name="offer_min_duration_positive"),
            models.CheckConstraint(
                condition=Q(max_duration_hours__isnull=True)
                | Q(max_duration_hours__gte=F("min_duration_hours")),
                name="offer_max_duration_gte_min"),
            models.CheckConstraint(
                condition=Q(available_until__isnull=True)
                | Q(available_until__gt=F("available_from")),
                name="offer_window_ordered"),
        ]
        # Covering partial indexes for the public search: the page comes from the index
        # alone, with no heap reads (docs/BENCHMARKS.md, bench/offer_search.py).
        indexes = [
            models.Index(fields=["price_per_gpu_hour", "id"], name="offer_search_price",
                         include=_covering("price_per_gpu_hour"), condition=Q(status="active")),
            PostgresOnlyIndex(F("reliability").desc(nulls_last=True), "id", name="offer_search_reliability",
                         include=_covering("reliability"), condition=Q(status="active")),
            PostgresOnlyIndex(F("gpu_memory_gb").desc(nulls_last=True), "id", name="offer_search_memory",
                         include=_covering("gpu_memory_gb"), condition=Q(status="active")),
            models.Index(fields=["gpu_model", "price_per_gpu_hour", "id"], name="offer_search_model",
                         include=_covering("gpu_model", "price_per_gpu_hour"),
                         condition=Q(status="active")),
            # Data-centre GPUs (40 GB and more) sorted by price: the cheapest offers are small
            # GPUs, so the general price index would walk past thousands of them first.
            models.Index(fields=["price_per_gpu_hour", "id"], name="offer_search_large_gpu",
                         include=_covering("price_per_gpu_hour"),
                         condition=Q(status="active", gpu_memory_gb__gte=40)),
            models.Index(fields=["compliance_verified", "price_per_gpu_hour", "id"],
                         name="offer_search_compliance",
                         include=_covering("compliance_verified", "price_per_gpu_hour"),
                         condition=Q(status="active")),
            models.Index(fields=["region", "price_per_gpu_hour", "id"], name="offer_search_region",
                         include=_covering("region", "price_per_gpu_hour"),
                         condition=Q(status="active")),
            # A model in a region (EU-DE H100): the region index alone walked every offer in
            # the region (5,000 of 100k) to find the model's 70; the tail of the search.
            models.Index(fields=["gpu_model", "region", "price_per_gpu_hour", "id"],
                         name="offer_search_model_region",
                         include=_covering("gpu_model", "region", "price_per_gpu_hour"),
                         condition=Q(status="active")),
        ]

    def __str__(self) -> str:
        return f"{self.gpus_offered}× {self.gpu_model} @ {self.price_per_gpu_hour} tUSD/GPU-h"

    @property
    def gpus_available(self) -> int:
        return self.gpus_offered - self.gpus_reserved

    @property
    def compliance_tags(self) -> list[str]:
        return catalogue.compliance_tags(self.compliance_verified)
