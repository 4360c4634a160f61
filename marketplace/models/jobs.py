"""Jobs, their timeline, their placements on nodes (assignments), checkpoints, metrics and logs."""

from decimal import Decimal
from typing import ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q

from .accounts import Organization
from .common import MONEY
from .datasets import CodeBundle, Dataset
from .market import Node, Offer


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
    # A fine-tune: the weights (a Dataset of kind "weights") the model starts from at step 0.
    weights = models.ForeignKey(Dataset, on_delete=models.PROTECT, null=True, blank=True,
                                related_name="weights_jobs")
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
    rank = models.PositiveIntegerField(null=True, blank=True,
                                       help_text="Global rank that wrote it; empty: the launcher.")
    stream = models.CharField(max_length=6, default="stdout", help_text="stdout or stderr.")
    line = models.CharField(max_length=2000)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="logline_seq_unique")]
        indexes = [models.Index(fields=["job", "rank", "seq"], name="logline_job_rank")]

    def __str__(self) -> str:
        return self.line[:80]
