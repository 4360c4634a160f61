"""Input serializers parse and type-check; the services own the domain rules and their
messages. Output serializers render. Decimals are strings (money keeps its 6 places)."""

import re
from decimal import Decimal

from django.conf import settings
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .. import catalogue, runtimes
from ..errors import MarketError
from ..models import Assignment, Dataset, Job, JobEvent, MetricPoint, Node, Offer
from ..selectors.budget import budget_view
from ..selectors.checkpoints import partial_result
from ..selectors.execution import job_assignments, job_progress
from ..selectors.live import cost_so_far
from ..selectors.ownership import is_job_owner
from ..selectors.payments import job_escrow
from ..selectors.verification import job_model_downloadable, job_verification_summary
from ..services.job_spec import JobSpec
from ..services.nodes import NodeSpec
from ..services.offers import OfferSpec

MAX_ID = 2**63 - 1
SMALL = 32767  # PositiveSmallIntegerField
MONEY = {"max_digits": 20, "decimal_places": 6}
UNIT = "tUSD/GPU-h"
# Null until there is something to show (no progress reported yet, no escrow).
NULLABLE_OBJECT = {"type": "object", "additionalProperties": {}, "nullable": True}


def _tags(max_items: int = 16):
    return serializers.ListField(child=serializers.CharField(max_length=32), max_length=max_items,
                                 required=False, default=list)


# --- Templates -----------------------------------------------------------------------

class TemplateSerializer(serializers.Serializer):
    name = serializers.CharField()
    title = serializers.CharField()
    sector = serializers.CharField()
    description = serializers.CharField()
    metric = serializers.CharField()
    dataset_kind = serializers.CharField()
    params_schema = serializers.JSONField()
    defaults = serializers.SerializerMethodField()
    samples = serializers.ListField(child=serializers.DictField())

    def get_defaults(self, template: catalogue.Template) -> dict:
        return template.defaults()


# --- Offers --------------------------------------------------------------------------

class OfferSerializer(serializers.ModelSerializer):
    node_name = serializers.CharField(source="node.name", read_only=True)
    provider = serializers.CharField(source="provider.name", read_only=True)
    gpus_available = serializers.IntegerField(read_only=True)
    unit = serializers.SerializerMethodField()
    region_name = serializers.SerializerMethodField()
    compliance = serializers.ListField(source="compliance_tags", child=serializers.CharField(),
                                       read_only=True)
    is_new = serializers.SerializerMethodField()
    online = serializers.BooleanField(source="node_online", read_only=True)

    class Meta:
        model = Offer
        fields = ["id", "node", "node_name", "provider", "gpu_model", "gpu_memory_gb",
                  "gpus_offered", "gpus_available", "price_per_gpu_hour", "unit", "region",
                  "region_name", "compliance", "reliability", "is_new", "online", "provider_stake",
                  "available_from", "available_until", "min_duration_hours",
                  "max_duration_hours", "accepts_custom_code", "status"]
        read_only_fields = fields

    def get_unit(self, offer: Offer) -> str:
        return UNIT

    def get_region_name(self, offer: Offer) -> str:
        return catalogue.REGIONS.get(offer.region, offer.region)

    def get_is_new(self, offer: Offer) -> bool:
        return offer.reliability is None


class OfferListSerializer(OfferSerializer):
    """The same fields as OfferSerializer, built directly: the public search renders many
    rows per request, and DRF's per-field machinery was a third of its time."""

    def to_representation(self, o: Offer) -> dict:
        price = o.price_per_gpu_hour
        return {
            "id": o.pk, "node": o.node_id, "node_name": o.node.name, "provider": o.provider.name,
            "gpu_model": o.gpu_model, "gpu_memory_gb": o.gpu_memory_gb,
            "gpus_offered": o.gpus_offered, "gpus_available": o.gpus_offered - o.gpus_reserved,
            "price_per_gpu_hour": f"{price:.6f}", "unit": UNIT, "region": o.region,
            "region_name": catalogue.REGIONS.get(o.region, o.region),
            "compliance": o.compliance_tags,
            "reliability": f"{o.reliability:.4f}" if o.reliability is not None else None,
            "is_new": o.reliability is None, "online": o.node_online,
            "provider_stake": f"{o.provider_stake:.6f}",
            "available_from": _iso(o.available_from), "available_until": _iso(o.available_until),
            "min_duration_hours": f"{o.min_duration_hours:.2f}",
            "max_duration_hours": f"{o.max_duration_hours:.2f}" if o.max_duration_hours is not None else None,
            "accepts_custom_code": o.accepts_custom_code,
            "status": o.status,
        }


def _iso(value) -> str | None:
    return serializers.DateTimeField().to_representation(value) if value is not None else None


class OfferWriteSerializer(serializers.Serializer):
    """Create takes `node`; update (PUT/PATCH) keeps the offer on its node."""

    node = serializers.IntegerField(min_value=1, max_value=MAX_ID,
                                    help_text="One of your nodes (create only).")
    gpus_offered = serializers.IntegerField(min_value=1, max_value=SMALL)
    price_per_gpu_hour = serializers.DecimalField(**MONEY, help_text="tUSD per GPU-hour.")
    available_from = serializers.DateTimeField(required=False, allow_null=True)
    available_until = serializers.DateTimeField(required=False, allow_null=True)
    min_duration_hours = serializers.DecimalField(max_digits=8, decimal_places=2,
                                                  required=False, default=Decimal("0.25"))
    max_duration_hours = serializers.DecimalField(max_digits=8, decimal_places=2,
                                                  required=False, allow_null=True)
    accepts_custom_code = serializers.BooleanField(
        required=False, default=False,
        help_text="Run consumers' own code (code bundles) in the agent's sandbox on this offer.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance is not None:
            self.fields.pop("node")

    def to_spec(self, base: Offer | None = None) -> OfferSpec:
        data = dict(self.validated_data)
        if base is not None and self.partial:
            for name in self.fields:
                data.setdefault(name, getattr(base, name))
        return OfferSpec(
            gpus_offered=data["gpus_offered"], price_per_gpu_hour=data["price_per_gpu_hour"],
            available_from=data.get("available_from"),
            available_until=data.get("available_until"),
            min_duration_hours=data.get("min_duration_hours", Decimal("0.25")),
            max_duration_hours=data.get("max_duration_hours"),
            accepts_custom_code=data.get("accepts_custom_code", False),
        )


# --- Nodes ---------------------------------------------------------------------------

class NodeSerializer(serializers.ModelSerializer):
    compliance_claimed = serializers.ListField(source="claimed_tags",
                                               child=serializers.CharField(), read_only=True)
    compliance_verified = serializers.ListField(source="verified_tags",
                                                child=serializers.CharField(), read_only=True)

    class Meta:
        model = Node
        fields = ["id", "name", "gpu_model", "gpu_count", "gpu_memory_gb", "cpu_cores", "ram_gb",
                  "disk_gb", "bandwidth_mbps", "region", "compliance_claimed",
                  "compliance_verified", "status", "last_heartbeat_at", "benchmark_tflops",
                  "agent_version", "runtime", "reliability", "is_new", "reliability_detail",
                  "reliability_at",
                  "token_prefix", "created_at"]
        read_only_fields = fields

    is_new = serializers.SerializerMethodField(help_text="Too little history for a reliability yet.")

    def get_is_new(self, node: Node) -> bool:
        return node.reliability is None


class NodeWithTokenSerializer(NodeSerializer):
    agent_token = serializers.SerializerMethodField(
        help_text="The agent's token. Shown this once; only its hash is stored.")

    class Meta(NodeSerializer.Meta):
        fields = [*NodeSerializer.Meta.fields, "agent_token"]
        read_only_fields = fields

    def get_agent_token(self, node: Node) -> str:
        return self.context["agent_token"]


class NodeWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=80)
    gpu_model = serializers.CharField(max_length=32,
                                      help_text=f"One of: {', '.join(catalogue.GPU_MODELS)}.")
    gpu_count = serializers.IntegerField(min_value=1, max_value=64)
    gpu_memory_gb = serializers.IntegerField(
        min_value=0, max_value=1024, required=False, allow_null=True,
        help_text="Per GPU; defaults to the model's memory. 0 for cpu nodes.")
    cpu_cores = serializers.IntegerField(min_value=1, max_value=4096)
    ram_gb = serializers.IntegerField(min_value=1, max_value=65536)
    disk_gb = serializers.IntegerField(min_value=1, max_value=10**7)
    bandwidth_mbps = serializers.IntegerField(min_value=1, max_value=10**7, required=False,
                                              allow_null=True)
    region = serializers.CharField(max_length=8, help_text="A region code such as EU-DE.")
    compliance_claimed = _tags()

    def validate_compliance_claimed(self, value: list[str]) -> list[str]:
        try:
            catalogue.compliance_mask(value)
        except MarketError as exc:
            raise serializers.ValidationError(exc.message) from None
        return value

    def to_spec(self, base: Node | None = None) -> NodeSpec:
        data = dict(self.validated_data)
        if base is not None and self.partial:
            current = {name: getattr(base, name) for name in self.fields
                       if name != "compliance_claimed"}
            current["compliance_claimed"] = base.claimed_tags
            if data.get("gpu_model", base.gpu_model) != base.gpu_model:
                current["gpu_memory_gb"] = None  # the new model's memory unless given
            data = {**current, **data}
        return NodeSpec(
            name=data["name"], gpu_model=data["gpu_model"], gpu_count=data["gpu_count"],
            gpu_memory_gb=data.get("gpu_memory_gb"), cpu_cores=data["cpu_cores"],
            ram_gb=data["ram_gb"], disk_gb=data["disk_gb"], region=data["region"],
            compliance=tuple(data.get("compliance_claimed") or ()),
            bandwidth_mbps=data.get("bandwidth_mbps"),
        )


# --- Jobs ----------------------------------------------------------------------------

class JobSpecSerializer(serializers.Serializer):
    """The body of POST /jobs/ and POST /jobs/quote/."""

    name = serializers.CharField(max_length=120)
    template = serializers.CharField(max_length=64, required=False, allow_blank=True, default="",
                                     help_text="A name from /api/v1/templates/ (or give `bundle`).")
    bundle = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False,
                                      allow_null=True, default=None,
                                      help_text="Your code bundle's id, in place of a template.")
    params = serializers.JSONField(required=False, default=dict,
                                   help_text="Hyper-parameters; the template's or the bundle's "
                                             "schema applies.")
    dataset = serializers.CharField(max_length=80, required=False, allow_blank=True, default="",
                                    help_text='"sample:<name>" or the id of an uploaded dataset; '
                                              "empty for a bundle that makes its own data.")
    nodes = serializers.IntegerField(min_value=1, max_value=SMALL)
    sync = serializers.JSONField(
        required=False, allow_null=True, default=None,
        help_text='How the nodes synchronise: {"mode": "ddp"} (default) or {"mode": "diloco", '
                  '"inner_steps": 50, "outer_lr": 0.7, "outer_momentum": 0.9, "precision": '
                  '"fp32" | "fp16" | "int8"} (2 or more nodes).')
    gpus_per_node = serializers.IntegerField(min_value=1, max_value=SMALL)
    min_gpu_memory_gb = serializers.IntegerField(min_value=0, max_value=SMALL, required=False,
                                                 default=0)
    gpu_models = _tags()
    regions = _tags(32)
    compliance = _tags()
    min_reliability = serializers.DecimalField(max_digits=5, decimal_places=4, required=False,
                                               allow_null=True, default=None)
    max_price_per_gpu_hour = serializers.DecimalField(**MONEY)
    budget = serializers.DecimalField(**MONEY, help_text="tUSD.")
    deadline = serializers.DateTimeField(help_text="ISO 8601 with a time zone.")
    duration_hours = serializers.DecimalField(max_digits=8, decimal_places=2, required=False,
                                              default=Decimal("1"))

    def to_spec(self) -> JobSpec:
        d = self.validated_data
        return JobSpec(
            name=d["name"], template=d["template"], params=d["params"], dataset=d["dataset"],
            bundle=str(d["bundle"]) if d.get("bundle") else "",
            nodes=d["nodes"], gpus_per_node=d["gpus_per_node"], sync=d["sync"],
            min_gpu_memory_gb=d["min_gpu_memory_gb"], gpu_models=tuple(d["gpu_models"]),
            regions=tuple(d["regions"]), compliance=tuple(d["compliance"]),
            min_reliability=d["min_reliability"],
            max_price_per_gpu_hour=d["max_price_per_gpu_hour"], budget=d["budget"],
            deadline=d["deadline"], duration_hours=d["duration_hours"],
        )


class JobEventSerializer(serializers.ModelSerializer):
    at = serializers.DateTimeField(source="created_at")

    class Meta:
        model = JobEvent
        fields = ["at", "from_status", "to_status", "reason", "message"]


class VerificationSerializer(serializers.Serializer):
    status = serializers.CharField()
    report_url = serializers.CharField(allow_null=True)


class JobListSerializer(serializers.ModelSerializer):
    status_display = serializers.CharField(source="get_status_display")
    dataset = serializers.CharField(source="dataset_ref")

    class Meta:
        model = Job
        fields = ["id", "name", "status", "status_display", "template", "bundle", "params", "dataset",
                  "nodes", "gpus_per_node", "sync", "min_gpu_memory_gb", "gpu_models", "regions",
                  "compliance", "min_reliability", "max_price_per_gpu_hour", "budget",
                  "duration_hours", "deadline", "created_at", "status_changed_at"]
        read_only_fields = fields


class AssignmentSerializer(serializers.ModelSerializer):
    """One node's part of a placement, with the price locked when it was placed."""

    node_name = serializers.CharField(source="node.name")
    provider = serializers.CharField(source="node.provider.name")
    region = serializers.CharField(source="node.region")
    gpu_model = serializers.CharField(source="node.gpu_model")
    node_status = serializers.CharField(source="node.status")
    last_heartbeat_at = serializers.DateTimeField(source="node.last_heartbeat_at")

    class Meta:
        model = Assignment
        fields = ["id", "attempt", "node_rank", "node", "node_name", "provider", "region",
                  "gpu_model", "gpus", "price_per_gpu_hour", "status", "node_status",
                  "last_heartbeat_at", "resume_step", "started_at", "finished_at", "comm_bytes",
                  "comm_bytes_ddp", "last_step", "last_step_at"]
        read_only_fields = fields


class MetricPointSerializer(serializers.ModelSerializer):
    class Meta:
        model = MetricPoint
        fields = ["seq", "step", "total_steps", "epoch", "loss", "samples_per_sec", "comm_bytes",
                  "comm_bytes_ddp", "at"]
        read_only_fields = fields


class JobDetailSerializer(JobListSerializer):
    """The job with its timeline. progress, assignments, artifact, escrow and verification
    are filled by the execution, payment and verification work."""

    timeline = JobEventSerializer(source="events", many=True, read_only=True)
    progress = serializers.SerializerMethodField()
    assignments = serializers.SerializerMethodField()
    artifact_url = serializers.SerializerMethodField()
    partial_result = serializers.SerializerMethodField()
    escrow = serializers.SerializerMethodField()
    spend = serializers.SerializerMethodField()
    verification = serializers.SerializerMethodField()

    class Meta(JobListSerializer.Meta):
        fields = [*JobListSerializer.Meta.fields, "timeline", "progress", "assignments",
                  "artifact_url", "partial_result", "escrow", "spend", "verification"]
        read_only_fields = fields

    @extend_schema_field(NULLABLE_OBJECT)
    def get_progress(self, job: Job) -> dict | None:
        return job_progress(job)

    @extend_schema_field(AssignmentSerializer(many=True))
    def get_assignments(self, job: Job) -> list:
        return AssignmentSerializer(job_assignments(job), many=True).data

    @extend_schema_field({"type": "string", "format": "uri-reference", "nullable": True})
    def get_artifact_url(self, job: Job) -> str | None:
        """Only where the download would be served (after verification passed; staff always)."""
        request = self.context.get("request")
        if not job_model_downloadable(job, getattr(request, "user", None)):
            return None
        return reverse("api:job-artifact", args=[job.pk])

    @extend_schema_field(NULLABLE_OBJECT)
    def get_partial_result(self, job: Job) -> dict | None:
        """{step, size_bytes, sha256, url} of the newest trusted checkpoint, for the job's
        organization and staff (`GET /jobs/{id}/checkpoint/`); null when there is none."""
        user = getattr(self.context.get("request"), "user", None)
        if user is None or not (user.is_staff or is_job_owner(user, job)):
            return None
        ckpt = partial_result(job.pk)
        if ckpt is None:
            return None
        return {"step": ckpt.step, "size_bytes": ckpt.size_bytes, "sha256": ckpt.sha256,
                "url": reverse("api:job-checkpoint", args=[job.pk])}

    @extend_schema_field(NULLABLE_OBJECT)
    def get_escrow(self, job: Job) -> dict | None:
        return job_escrow(job)

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_spend(self, job: Job) -> dict:
        """{limit, spent, percent, warning, paused}: the metered spend against the budget
        (the escrowed amount when the escrow is on)."""
        return budget_view(job, spent=cost_so_far(job))

    @extend_schema_field(VerificationSerializer)
    def get_verification(self, job: Job) -> dict:
        return job_verification_summary(job)


class FundSerializer(serializers.Serializer):
    amount = serializers.DecimalField(max_digits=20, decimal_places=6, required=False,
                                      help_text="Optional; must equal the job's budget.")


class BudgetSerializer(serializers.Serializer):
    budget = serializers.DecimalField(max_digits=20, decimal_places=6, min_value=Decimal("0.000001"),
                                      help_text="The new total budget in tUSD (only raised).")


# --- Wallets -------------------------------------------------------------------------

class WalletSerializer(serializers.Serializer):
    """A wallet of the caller's organization (never its key)."""

    id = serializers.IntegerField()
    address = serializers.CharField(help_text="EIP-55 checksummed.")
    kind = serializers.ChoiceField(choices=["custodial", "external"])
    is_payout = serializers.BooleanField(help_text="Where the organization is paid (providers).")
    linked_by = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_linked_by(self, wallet) -> str | None:
        return wallet.linked_by.get_username() if wallet.linked_by_id else None


class PayoutChangeSerializer(serializers.Serializer):
    """Where the organization is paid, and the change waiting for its delay."""

    payout_address = serializers.CharField(allow_null=True, help_text="Paid here now.")
    pending_address = serializers.CharField(allow_null=True,
                                            help_text="Paid here from `effective_at` (null: none pending).")
    effective_at = serializers.DateTimeField(allow_null=True)
    requested_by = serializers.CharField(allow_null=True)


class SiweNonceSerializer(serializers.Serializer):
    """What the browser needs to build the EIP-4361 message it signs."""

    nonce = serializers.CharField()
    expires_at = serializers.DateTimeField(help_text="Use it as the message's Expiration Time.")
    domain = serializers.CharField(help_text="This host: the message's domain.")
    uri = serializers.CharField(help_text="The message's URI.")
    chain_id = serializers.IntegerField(help_text="The platform's chain (EIP-155).")
    statement = serializers.CharField()
    address = serializers.CharField(allow_null=True, help_text="The `address` query parameter, "
                                    "EIP-55 checksummed (wallets answer in lower case).")


# The siwe parser's time grows with the square of a message's length (a 4,000-character
# line took 20 s of CPU): a real message is ~450 characters and starts with this line.
SIWE_MAX_CHARS = 1000
SIWE_FIRST_LINE = re.compile(r"^[^\n]{1,253} wants you to sign in with your Ethereum account:\n"
                             r"0x[0-9a-fA-F]{40}\n")


class WalletLinkSerializer(serializers.Serializer):
    message = serializers.CharField(max_length=SIWE_MAX_CHARS, trim_whitespace=False,
                                    help_text="The EIP-4361 message, as signed.")
    signature = serializers.RegexField(r"^0x[0-9a-fA-F]{130}$", help_text="The personal_sign "
                                       "(EIP-191) signature, 65 bytes hex.")

    def validate_message(self, value: str) -> str:
        if not SIWE_FIRST_LINE.match(value):
            raise serializers.ValidationError(
                "The message is not a Sign-In with Ethereum (EIP-4361) message: it starts with "
                "'<domain> wants you to sign in with your Ethereum account:' and the address on "
                "the next line.", code="malformed_message")
        return value


# --- Quotes --------------------------------------------------------------------------

class CandidateSerializer(serializers.Serializer):
    offer_id = serializers.IntegerField()
    node_id = serializers.IntegerField()
    node_name = serializers.CharField()
    provider = serializers.CharField()
    gpu_model = serializers.CharField()
    gpu_memory_gb = serializers.IntegerField()
    region = serializers.CharField()
    gpus = serializers.IntegerField()
    price_per_gpu_hour = serializers.DecimalField(**MONEY)
    reliability = serializers.DecimalField(max_digits=5, decimal_places=4, allow_null=True)
    estimated_cost = serializers.DecimalField(**MONEY)


class ReasonSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="no_match, relax or over_budget.")
    constraint = serializers.CharField(help_text="The constraint concerned, e.g. region.")
    message = serializers.CharField()


class QuoteSerializer(serializers.Serializer):
    feasible = serializers.BooleanField()
    candidates = CandidateSerializer(many=True)
    estimated_cost = serializers.DecimalField(**MONEY, allow_null=True)
    estimated_start = serializers.CharField(allow_null=True)
    reasons = ReasonSerializer(many=True)
    sync = serializers.JSONField(help_text="The job's synchronisation settings, defaults filled in.")
    traffic_vs_ddp = serializers.FloatField(
        allow_null=True, help_text="DiLoCo: how many times fewer bytes per node and step than DDP "
                                   "(by model, for the node that sends the most); null for DDP.")
    sync = serializers.JSONField(help_text="The job's synchronisation settings, defaults filled in.")
    traffic_vs_ddp = serializers.FloatField(
        allow_null=True, help_text="DiLoCo: how many times fewer bytes per node and step than DDP "
                                   "(by model, for the node that sends the most); null for DDP.")


# --- Datasets ------------------------------------------------------------------------

class DatasetSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = ["id", "name", "kind", "rows", "columns", "entries", "size_bytes", "sha256",
                  "created_at"]
        read_only_fields = fields


# --- Resumable uploads and code bundles ----------------------------------------------------

class UploadCreateSerializer(serializers.Serializer):
    purpose = serializers.ChoiceField(choices=["dataset", "bundle"])
    name = serializers.CharField(max_length=200, help_text="The file's name with its extension: "
                                 ".csv or .zip for a dataset; .py, .zip, .tar, .tar.gz or .tgz "
                                 "for a bundle.")
    size_bytes = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    sha256 = serializers.RegexField(r"^[0-9a-fA-F]{64}$", help_text="The whole file's SHA-256, "
                                    "checked when the upload finishes.")
    label_column = serializers.CharField(max_length=128, required=False, allow_blank=True,
                                         help_text="Dataset (CSV): the class column, checked.")
    runtime = serializers.CharField(max_length=64, required=False, allow_blank=True,
                                    help_text="Bundle without computemesh.toml: the provider "
                                              "runtime it needs (default: the newest).")
    entry = serializers.CharField(max_length=200, required=False, allow_blank=True,
                                  help_text="Bundle without computemesh.toml: its task class, "
                                            "'module:Class' ('Class' for a single .py file).")
    params_schema = serializers.JSONField(required=False, allow_null=True, default=None,
                                          help_text="Bundle without computemesh.toml: the JSON "
                                                    "Schema of its params.")


class UploadSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    purpose = serializers.CharField()
    name = serializers.CharField()
    size_bytes = serializers.IntegerField()
    sha256 = serializers.CharField()
    offset = serializers.IntegerField(help_text="Bytes received and kept; send from here.")
    status = serializers.CharField(help_text="open or complete")
    result_id = serializers.IntegerField(allow_null=True, help_text="The dataset's or bundle's id "
                                         "once complete.")
    chunk_max_bytes = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_chunk_max_bytes(self, upload) -> int:
        return settings.UPLOAD_CHUNK_MAX_BYTES


class BundleSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField(help_text="py, zip or tar")
    size_bytes = serializers.IntegerField()
    sha256 = serializers.CharField()
    runtime = serializers.CharField()
    runtime_known = serializers.SerializerMethodField(
        help_text="Whether this platform lists the runtime (workers/runtimes.json).")
    entry = serializers.CharField()
    params_schema = serializers.JSONField()
    created_at = serializers.DateTimeField()

    def get_runtime_known(self, bundle) -> bool:
        return bundle.runtime in runtimes.runtimes()


class BundleUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A .py file, or a .zip/.tar/.tar.gz of a package, at "
                                           f"most {settings.BUNDLE_MAX_BYTES // 1_048_576} MB.")
    runtime = serializers.CharField(max_length=64, required=False, allow_blank=True)
    entry = serializers.CharField(max_length=200, required=False, allow_blank=True)
    params_schema = serializers.CharField(max_length=65536, required=False, allow_blank=True,
                                          help_text="JSON Schema of the params, as JSON text.")


class RuntimeSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    python = serializers.CharField()
    packages = serializers.DictField(child=serializers.CharField())


class DatasetUploadSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text=f"A UTF-8 CSV file with a header row, at most "
                  f"{settings.DATASET_MAX_BYTES // 1_048_576} MB.")
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    label_column = serializers.CharField(
        max_length=128, required=False, allow_blank=True,
        help_text="For classifier data: the class column. Checked at upload: it exists, holds at "
                  "least two classes, and every other column is numeric.")


# --- Auth ----------------------------------------------------------------------------

class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=512, style={"input_type": "password"},
                                     trim_whitespace=False)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    field = serializers.CharField(allow_null=True)
    code = serializers.CharField()
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()),
                                   required=False)


# --- The caller ------------------------------------------------------------------------

class MeOrganizationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=["consumer", "provider"])
    is_suspended = serializers.BooleanField()


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    is_staff = serializers.BooleanField()
    organization = MeOrganizationSerializer(allow_null=True)
    role = serializers.ChoiceField(choices=["owner", "admin", "member"], allow_null=True,
                                   help_text="Your role in the organization.")
