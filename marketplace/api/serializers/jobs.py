"""Jobs (the spec a consumer sends, the list, the detail with its live parts, funding and
the budget) and quotes."""

from decimal import Decimal

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ...models import Assignment, Job, JobEvent, MetricPoint
from ...selectors.budget import budget_view
from ...selectors.checkpoints import partial_result
from ...selectors.execution import job_assignments, job_progress
from ...selectors.live import cost_so_far
from ...selectors.ownership import is_job_owner
from ...selectors.payments import job_escrow
from ...selectors.verification import job_model_downloadable, job_verification_summary
from ...services.job_spec import JobSpec
from .common import MAX_ID, MONEY, NULLABLE_OBJECT, SMALL, _tags

# --- Jobs ----------------------------------------------------------------------------

class JobSpecSerializer(serializers.Serializer):
    """The body of POST /jobs/ and POST /jobs/quote/."""

    name = serializers.CharField(max_length=120)
    template = serializers.CharField(max_length=64, required=False, allow_blank=True, default="",
                                     help_text="A name from /api/v1/templates/ (or give `bundle`).")
    bundle = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False,
                                      allow_null=True, default=None,
                                      help_text="Your code bundle's id, in place of a template.")
    weights = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False,
                                       allow_null=True, default=None,
                                       help_text="A fine-tune: the id of your uploaded weights "
                                                 "file (a .pt state_dict) the model starts from.")
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
            weights=str(d["weights"]) if d.get("weights") else "",
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


class DeterminismSerializer(serializers.Serializer):
    deterministic = serializers.BooleanField()
    steps = serializers.IntegerField(help_text="Steps replayed twice from the same state.")
    rel_l2 = serializers.FloatField(allow_null=True, help_text="Between the two replays (0: the same bits).")
    seconds = serializers.FloatField(allow_null=True, help_text="What the check cost.")


class VerificationMethodSerializer(serializers.Serializer):
    method = serializers.ChoiceField(
        choices=["checking", "replay", "evaluation_only", "unknown"],
        help_text="How the work will be verified: replay (step replay and held-out evaluation), "
                  "evaluation_only (held-out evaluation only: a consumer's task that is not "
                  "deterministic under the runtime's seeding, or DiLoCo across nodes), checking "
                  "(the verifier is replaying a few of the task's steps twice), unknown (that "
                  "check failed; it runs again at verification).")
    message = serializers.CharField()
    determinism = DeterminismSerializer(allow_null=True, help_text="The check's answer, once known.")


class VerificationSerializer(serializers.Serializer):
    status = serializers.CharField()
    report_url = serializers.CharField(allow_null=True)
    method = VerificationMethodSerializer(help_text="How this job's work is verified (known before funding).")


class JobListSerializer(serializers.ModelSerializer):
    status_display = serializers.CharField(source="get_status_display")
    dataset = serializers.CharField(source="dataset_ref")

    class Meta:
        model = Job
        fields = ["id", "name", "status", "status_display", "template", "bundle", "weights", "params",
                  "dataset", "nodes", "gpus_per_node", "sync", "min_gpu_memory_gb", "gpu_models", "regions",
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
    verification = VerificationMethodSerializer(
        help_text="How the work will be verified. For a code bundle the first quote starts the "
                  "determinism check (`checking`); ask again for its answer.")
