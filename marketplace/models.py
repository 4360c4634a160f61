"""The marketplace's domain model.

Writes go through `marketplace.services`; a job's status changes only through
`marketplace.job_states`. Money is Decimal with 6 places in the settlement token (tUSD).
"""

import uuid
from decimal import Decimal
from typing import ClassVar

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q

from . import catalogue

MONEY = {"max_digits": 20, "decimal_places": 6}


class Organization(models.Model):
    class Kind(models.TextChoices):
        CONSUMER = "consumer", "Consumer (trains models)"
        PROVIDER = "provider", "Provider (lists GPU machines)"

    class Sector(models.TextChoices):
        HEALTHCARE = "healthcare", "Healthcare"
        ENERGY = "energy", "Energy"
        RESEARCH = "research", "Research"
        OTHER = "other", "Other"

    name = models.CharField(max_length=120, unique=True)
    slug = models.SlugField(max_length=140, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    sector = models.CharField(max_length=16, choices=Sector.choices, default=Sector.OTHER)
    # Shared with colleagues so that they can join at sign-up; rotating it revokes it.
    join_code = models.CharField(max_length=32, unique=True)
    is_verified = models.BooleanField(default=False, help_text="Checked by an admin.")
    is_suspended = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_provider(self) -> bool:
        return self.kind == self.Kind.PROVIDER

    @property
    def is_consumer(self) -> bool:
        return self.kind == self.Kind.CONSUMER


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="membership")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE,
                                     related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.user} @ {self.organization} ({self.role})"


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
        ]

    def __str__(self) -> str:
        return f"{self.gpus_offered}× {self.gpu_model} @ {self.price_per_gpu_hour} tUSD/GPU-h"

    @property
    def gpus_available(self) -> int:
        return self.gpus_offered - self.gpus_reserved

    @property
    def compliance_tags(self) -> list[str]:
        return catalogue.compliance_tags(self.compliance_verified)


class Dataset(models.Model):
    owner = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="datasets")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, related_name="+")
    name = models.CharField(max_length=200)
    file = models.FileField(upload_to="datasets/%Y/%m/")
    size_bytes = models.PositiveBigIntegerField()
    rows = models.PositiveIntegerField()
    columns = models.JSONField(default=list)
    sha256 = models.CharField(max_length=64)
    # A CSV table (rows and columns checked), or a zip of files of any layout (class folders
    # of images…) that a code bundle's task reads; `entries` counts its files.
    kind = models.CharField(max_length=8, choices=[("csv", "CSV table"), ("zip", "Zip of files")],
                            default="csv")
    entries = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.rows} rows)"


class CodeBundle(models.Model):
    """A consumer's own training task: one .py file or a zip/tar of a package, stored
    content-addressed (encrypted at rest) under its SHA-256 (services/bundles.py)."""

    owner = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="bundles")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, related_name="+")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=8, choices=[("py", "Python file"), ("zip", "Zip archive"),
                                                   ("tar", "Tar archive")])
    file = models.FileField(upload_to="bundles/")
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    # What it declares (its computemesh.toml, or the upload's fields): the provider runtime
    # it needs, its task class, and the JSON Schema of its params.
    runtime = models.CharField(max_length=64)
    entry = models.CharField(max_length=200)
    params_schema = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["owner", "sha256"], name="bundle_owner_sha256")]

    def __str__(self) -> str:
        return f"{self.name} ({self.sha256[:12]}…)"


class Upload(models.Model):
    """A resumable, chunked upload of a dataset or a code bundle (services/uploads.py): its
    bytes so far are in a partial file; `offset` counts those written whole."""

    class Purpose(models.TextChoices):
        DATASET = "dataset", "Dataset"
        BUNDLE = "bundle", "Code bundle"

    class Status(models.TextChoices):
        OPEN = "open", "Receiving"
        COMPLETE = "complete", "Complete"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="uploads")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, related_name="+")
    purpose = models.CharField(max_length=8, choices=Purpose.choices)
    name = models.CharField(max_length=200)
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    offset = models.PositiveBigIntegerField(default=0)
    # What the finished file becomes with: label_column; a bundle's runtime, entry, schema.
    options = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    # The dataset's or bundle's id once complete.
    result_id = models.PositiveBigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "status"], name="upload_owner_status")]

    def __str__(self) -> str:
        return f"{self.purpose} upload {self.id} ({self.offset}/{self.size_bytes})"


class Job(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SUBMITTED = "submitted", "Submitted, waiting for funding"
        FUNDED = "funded", "Funded"
        MATCHING = "matching", "Looking for machines"
        RUNNING = "running", "Training"
        INTERRUPTED = "interrupted", "Interrupted, resuming"
        PAUSED = "paused", "Paused: budget spent"
        VERIFYING = "verifying", "Verifying the result"
        COMPLETED = "completed", "Completed"
        SETTLED = "settled", "Settled"
        CANCELLED = "cancelled", "Cancelled"
        FAILED = "failed", "Failed"
        REFUNDED = "refunded", "Refunded"

        # Groups of statuses, set below the class (an enum's body cannot name its members).
        # Which status may follow which is job_states.TRANSITIONS, not these.
        ACTIVE: ClassVar[frozenset["Job.Status"]]
        TERMINAL: ClassVar[frozenset["Job.Status"]]
        WAITING: ClassVar[frozenset["Job.Status"]]

    # Funded and not over: the job holds its deposit and wants (or has) machines.
    Status.ACTIVE = frozenset({Status.FUNDED, Status.MATCHING, Status.RUNNING, Status.INTERRUPTED,
                               Status.PAUSED, Status.VERIFYING})
    # No work will happen any more; money may still move (cancelled/failed → settled/refunded).
    Status.TERMINAL = frozenset({Status.COMPLETED, Status.SETTLED, Status.CANCELLED, Status.FAILED,
                                 Status.REFUNDED})
    # Active with no training under way: waiting for machines, interrupted, or paused.
    Status.WAITING = frozenset({Status.FUNDED, Status.MATCHING, Status.INTERRUPTED, Status.PAUSED})

    owner = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="jobs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, related_name="+")
    name = models.CharField(max_length=120)
    template = models.CharField(max_length=64)
    params = models.JSONField(default=dict)
    dataset_ref = models.CharField(max_length=80, help_text="sample:<name> or an upload's id.")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, null=True, blank=True,
                                related_name="jobs")
    # A consumer's own task, trained in place of a template (`template` is then empty).
    bundle = models.ForeignKey(CodeBundle, on_delete=models.PROTECT, null=True, blank=True,
                               related_name="jobs")
    nodes = models.PositiveSmallIntegerField()
    gpus_per_node = models.PositiveSmallIntegerField()
    # How the nodes synchronise: {"mode": "ddp"} or DiLoCo's settings (services/job_spec.py).
    sync = models.JSONField(default=dict, blank=True)
    min_gpu_memory_gb = models.PositiveSmallIntegerField(default=0)
    gpu_models = models.JSONField(default=list, blank=True)
    regions = models.JSONField(default=list, blank=True)
    compliance = models.JSONField(default=list, blank=True)
    min_reliability = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    max_price_per_gpu_hour = models.DecimalField(**MONEY)
    budget = models.DecimalField(**MONEY)
    duration_hours = models.DecimalField(max_digits=8, decimal_places=2, default=Decimal("1"),
                                         help_text="Expected wall-clock hours, for quotes.")
    deadline = models.DateTimeField()
    # Written only by marketplace.job_states.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    status_changed_at = models.DateTimeField(auto_now_add=True)
    # Execution: each placement is an attempt; nodes lost during the job are not reused.
    attempt = models.PositiveIntegerField(default=0)
    excluded_nodes = models.JSONField(default=list, blank=True)
    metric_seq = models.PositiveIntegerField(default=0, help_text="Last MetricPoint.seq.")
    log_seq = models.PositiveIntegerField(default=0, help_text="Last LogLine.seq.")
    current_step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    last_loss = models.FloatField(null=True, blank=True)
    samples_per_sec = models.FloatField(null=True, blank=True)
    comm_bytes = models.BigIntegerField(null=True, blank=True,
                                        help_text="Bytes the job's nodes sent to synchronise "
                                                  "(latest report).")
    comm_bytes_ddp = models.BigIntegerField(null=True, blank=True,
                                            help_text="What plain DDP would have sent for the same steps.")
    metric_name = models.CharField(max_length=32, blank=True)
    metric_value = models.FloatField(null=True, blank=True)
    artifact = models.FileField(upload_to="artifacts/%Y/%m/", blank=True)
    artifact_sha256 = models.CharField(max_length=64, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Budget safety (services/budget.py): the 80 % warning was given (cleared when a top-up
    # takes the spend below it again); the nodes were asked to checkpoint and pause.
    budget_warned_at = models.DateTimeField(null=True, blank=True)
    pause_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(nodes__gte=1), name="job_nodes_gte_1"),
            models.CheckConstraint(condition=Q(gpus_per_node__gte=1), name="job_gpus_gte_1"),
            models.CheckConstraint(condition=Q(max_price_per_gpu_hour__gt=0),
                                   name="job_price_positive"),
            models.CheckConstraint(condition=Q(budget__gt=0), name="job_budget_positive"),
            models.CheckConstraint(condition=Q(duration_hours__gt=0), name="job_duration_positive"),
        ]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="job_owner_recent"),
            models.Index(fields=["status", "status_changed_at"], name="job_status_age"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"

    @property
    def gpus_total(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def is_terminal(self) -> bool:
        return self.status in Job.Status.TERMINAL


class JobEvent(models.Model):
    """One line of a job's timeline: a status change, or a note, with a machine-readable
    reason code and a human message."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16, blank=True)
    reason = models.CharField(max_length=48)
    message = models.CharField(max_length=1000)
    data = models.JSONField(default=dict, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                              blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["job", "id"], name="jobevent_job")]

    def __str__(self) -> str:
        return f"{self.job_id}: {self.from_status or '·'} → {self.to_status or '·'} ({self.reason})"


class AuditEvent(models.Model):
    """Who did what to which object: compliance verifications, suspensions, placements."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                              blank=True, related_name="+")
    action = models.CharField(max_length=48)
    object_type = models.CharField(max_length=32)
    object_id = models.CharField(max_length=40)
    message = models.CharField(max_length=1000)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object")]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type}#{self.object_id}"


class Assignment(models.Model):
    """One node's part of one placement of a job, with the price locked at placement."""

    class Status(models.TextChoices):
        PENDING = "pending", "Placed, not yet sent"
        DISPATCHED = "dispatched", "Sent to the agent"
        ACCEPTED = "accepted", "Accepted by the agent"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        LOST = "lost", "Node lost"
        CANCELLED = "cancelled", "Cancelled"
        PAUSED = "paused", "Checkpointed and paused (budget spent)"

    ACTIVE = (Status.PENDING, Status.DISPATCHED, Status.ACCEPTED, Status.RUNNING)

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="assignments")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="assignments")
    offer = models.ForeignKey(Offer, on_delete=models.PROTECT, related_name="assignments")
    attempt = models.PositiveIntegerField()
    node_rank = models.PositiveSmallIntegerField()
    gpus = models.PositiveSmallIntegerField()
    price_per_gpu_hour = models.DecimalField(**MONEY)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    rdzv_host = models.CharField(max_length=255, blank=True)
    rdzv_port = models.PositiveIntegerField(null=True, blank=True)
    resume_step = models.PositiveIntegerField(null=True, blank=True)
    # Highest agent message sequence number applied; the next must be last_seq + 1.
    last_seq = models.PositiveIntegerField(default=0)
    comm_bytes = models.BigIntegerField(
        null=True, blank=True, help_text="Bytes this node sent to the other nodes (its agent's last report).")
    comm_bytes_ddp = models.BigIntegerField(
        null=True, blank=True, help_text="Bytes DDP would have sent from this node for the same steps.")
    # This node's own training step (its agent's heartbeats), and when the platform first saw
    # it: every node's, not only rank 0's, whose progress is the job's.
    last_step = models.PositiveIntegerField(
        null=True, blank=True, help_text="This node's own last training step (its agent's heartbeats).")
    last_step_at = models.DateTimeField(
        null=True, blank=True, help_text="When the platform first saw last_step.")
    detail = models.CharField(max_length=2000, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job_id", "attempt", "node_rank"]
        constraints = [
            # One live assignment per rank; a DiLoCo node lost mid-job is replaced in the
            # same attempt, next to its ended one.
            models.UniqueConstraint(fields=["job", "attempt", "node_rank"],
                                    name="assignment_live_rank_unique",
                                    condition=~Q(status__in=["failed", "lost", "cancelled"])),
            models.CheckConstraint(condition=Q(gpus__gte=1), name="assignment_gpus_gte_1"),
        ]
        indexes = [models.Index(fields=["node", "status"], name="assignment_node_status")]

    def __str__(self) -> str:
        return f"job {self.job_id} attempt {self.attempt} rank {self.node_rank} on node {self.node_id}"


class Checkpoint(models.Model):
    """A checkpoint a provider uploaded, with the SHA-256 it committed to."""

    class Status(models.TextChoices):
        # Checked on the verify queue after the upload (services/verification.py
        # checkpoint_validate): only a valid checkpoint is resumed from or paid up to.
        PENDING = "pending", "Being checked"
        VALID = "valid", "Valid"
        # Valid, and the work up to it passed a step-replay spot check: what a broken or
        # paused attempt is paid up to and what work resumes from (checkpoint_replay).
        VERIFIED = "verified", "Replayed"
        REJECTED = "rejected", "Rejected"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="checkpoints")
    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    file = models.FileField(upload_to="checkpoints/%Y/%m/")
    committed_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    rejected_reason = models.CharField(max_length=500, blank=True)
    validated_at = models.DateTimeField(null=True, blank=True)
    # The replay spot check of the work up to this checkpoint (asked for when work is to
    # resume from it or be paid up to it): when it was asked for, and what it found.
    replay_requested_at = models.DateTimeField(null=True, blank=True)
    replay = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job_id", "step"]
        constraints = [models.UniqueConstraint(fields=["assignment", "step"], name="checkpoint_step_unique")]
        indexes = [models.Index(fields=["job", "-step"], name="checkpoint_job_step")]

    def __str__(self) -> str:
        return f"job {self.job_id} step {self.step} ({self.sha256[:12]}…)"


class MetricPoint(models.Model):
    """A training progress sample, persisted before anyone is told about it."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="metrics")
    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="+")
    seq = models.PositiveIntegerField(help_text="Per job, gap-free, for resync.")
    step = models.PositiveIntegerField()
    total_steps = models.PositiveIntegerField()
    epoch = models.PositiveIntegerField(default=0)
    loss = models.FloatField(null=True)
    samples_per_sec = models.FloatField(null=True)
    comm_bytes = models.BigIntegerField(null=True, help_text="Cumulative bytes this node sent.")
    comm_bytes_ddp = models.BigIntegerField(null=True, help_text="Cumulative bytes DDP would have sent.")
    at = models.DateTimeField()

    class Meta:
        ordering = ["job_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="metric_seq_unique")]

    def __str__(self) -> str:
        return f"job {self.job_id} #{self.seq}: step {self.step} loss {self.loss}"


class LogLine(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_lines")
    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="+")
    seq = models.PositiveIntegerField(help_text="Per job, gap-free, for resync.")
    line = models.CharField(max_length=2000)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="logline_seq_unique")]

    def __str__(self) -> str:
        return self.line[:80]


class IdempotencyKey(models.Model):
    """The first answer to a write sent with an `Idempotency-Key` header, so that a client's
    retry of the same request gets that answer instead of a second job or dataset
    (services/idempotency.py). Kept IDEMPOTENCY_TTL (24 h); older keys count as unused."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    # SHA-256 of method, path and body: the same key with another request is refused.
    fingerprint = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField(encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_user_key")]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.key[:40]} → {self.response_status}"


from .payment_models import (  # noqa: E402,F401  (one app: Django finds its models here)
    ChainAccount,
    ChainContract,
    ChainCursor,
    ChainTransaction,
    Escrow,
    Payout,
    PayoutChange,
    Settlement,
    SiweNonce,
    Wallet,
)
from .trust_models import (  # noqa: E402,F401
    Dispute,
    DisputeSlash,
    GradientCommitment,
    NodeUptime,
    ProviderStake,
    StakeEvent,
    StakeOperation,
    VerificationReport,
)
