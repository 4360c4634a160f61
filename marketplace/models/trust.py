"""Trust: verification of training work and the disputes it opens.

`marketplace.services.verification` writes reports; a failed one opens a Dispute that
the operator resolves (slashing the provider's stake on the chain, or dismissing it).
"""

from django.conf import settings
from django.db import models
from django.db.models import Q

from .common import MONEY


class VerificationReport(models.Model):
    """The platform's check of one attempt's training work: the held-out evaluation of the
    final model and step-replay spot checks between committed checkpoints."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for a verifier"
        RUNNING = "running", "Verifying"
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"
        ERROR = "error", "Could not be verified"

    job = models.ForeignKey("marketplace.Job", on_delete=models.CASCADE, related_name="verifications")
    attempt = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # [{"from_step", "to_step", "rel_l2", "passed"}], picked after the work was committed.
    segments = models.JSONField(default=list, blank=True)
    threshold = models.FloatField(help_text="Largest relative L2 distance a replay may show.")
    metric_name = models.CharField(max_length=32, blank=True)
    metric_reported = models.FloatField(null=True, blank=True)
    metric_measured = models.FloatField(null=True, blank=True)
    replay_steps = models.PositiveIntegerField(default=0)
    train_steps = models.PositiveIntegerField(default=0)
    reasons = models.JSONField(default=list, blank=True, help_text="Why it failed, one line each.")
    runs = models.PositiveSmallIntegerField(default=0, help_text="Times the check was started.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job_id", "attempt"]
        constraints = [models.UniqueConstraint(fields=["job", "attempt"],
                                               name="one_verification_per_attempt")]

    def __str__(self) -> str:
        return f"verification of job {self.job_id} attempt {self.attempt}: {self.status}"

    @property
    def compute_share(self) -> float | None:
        """Replayed steps as a share of the steps trained (the verification overhead)."""
        return self.replay_steps / self.train_steps if self.train_steps else None


class Dispute(models.Model):
    """Work that failed verification: the provider is not paid for it, and the operator
    may slash its stake (the reason code goes on the chain with the slash)."""

    class Reason(models.TextChoices):
        REPLAY_MISMATCH = "replay_mismatch", "Replayed steps do not reproduce the checkpoint"
        METRIC_INFLATED = "metric_inflated", "Reported metric better than the model achieves"
        CHECKPOINT_UNCOMMITTED = "checkpoint_uncommitted", "Checkpoint not committed in time"
        ARTIFACT_MISMATCH = "artifact_mismatch", "Model differs from the last checkpoint"
        VERIFICATION_ERROR = "verification_error", "The work could not be verified"
        CONSUMER_CLAIM = "consumer_claim", "The consumer's dispute, upheld by staff"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        SLASHED = "slashed", "Stake slashed"
        DISMISSED = "dismissed", "Dismissed"

    # On the chain a reason is a small integer; this order is part of the contract's ABI use.
    REASON_CODES = {Reason.REPLAY_MISMATCH: 1, Reason.METRIC_INFLATED: 2,
                    Reason.CHECKPOINT_UNCOMMITTED: 3, Reason.ARTIFACT_MISMATCH: 4,
                    Reason.VERIFICATION_ERROR: 5, Reason.CONSUMER_CLAIM: 6}

    job = models.ForeignKey("marketplace.Job", on_delete=models.CASCADE, related_name="disputes")
    assignment = models.ForeignKey("marketplace.Assignment", on_delete=models.PROTECT,
                                   related_name="disputes")
    provider = models.ForeignKey("marketplace.Organization", on_delete=models.PROTECT,
                                 related_name="disputes")
    verification = models.ForeignKey(VerificationReport, on_delete=models.PROTECT, null=True,
                                     blank=True, related_name="disputes")
    reason = models.CharField(max_length=32, choices=Reason.choices)
    detail = models.CharField(max_length=2000, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    # False when the failed work cannot be pinned on this node (a DDP attempt across nodes
    # averages every node's gradients; an error while verifying): never slashed
    # automatically, left to staff, and not counted against the node's reputation.
    attributed = models.BooleanField(default=True)
    slash_amount = models.DecimalField(**MONEY, null=True, blank=True)
    slash_tx = models.CharField(max_length=66, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["assignment", "reason"], name="one_dispute_per_reason"),
            models.CheckConstraint(condition=Q(slash_amount__isnull=True) | Q(slash_amount__gt=0),
                                   name="dispute_slash_positive"),
        ]
        indexes = [models.Index(fields=["status", "-created_at"], name="dispute_status")]

    def __str__(self) -> str:
        return f"dispute #{self.pk} on job {self.job_id}: {self.reason} ({self.status})"


class GradientCommitment(models.Model):
    """One node's copy of the per-rank gradient commitments of a stretch of steps of a DDP
    attempt across nodes (workers/training/commitments.py): for each step, what every rank
    said its own gradient and the parameters projected to. Every node uploads its own copy,
    so that no node's word about another stands alone (verification's attribution)."""

    assignment = models.ForeignKey("marketplace.Assignment", on_delete=models.CASCADE,
                                   related_name="gradient_commitments")
    from_step = models.PositiveIntegerField()
    to_step = models.PositiveIntegerField(help_text="The checkpoint step that closed the stretch.")
    sha256 = models.CharField(max_length=64)
    # [{"step": s, "grad": [[k floats] per rank], "param": [[k floats] per rank]}, …], by step.
    table = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["assignment_id", "to_step"]
        constraints = [models.UniqueConstraint(fields=["assignment", "to_step"],
                                               name="one_commitment_per_stretch")]

    def __str__(self) -> str:
        return f"commitments of assignment {self.assignment_id}, steps {self.from_step}..{self.to_step}"


class ProviderStake(models.Model):
    """One staking address's stake on the ProviderStake contract, as the indexer has seen it
    (the chain is the truth; these rows follow its events)."""

    address = models.CharField(max_length=42, unique=True, help_text="Checksummed 0x address.")
    organization = models.ForeignKey("marketplace.Organization", on_delete=models.PROTECT, null=True,
                                     blank=True, related_name="stakes",
                                     help_text="Whose wallet it is (none: an address we do not know).")
    staked = models.DecimalField(**MONEY, default=0, help_text="Active stake.")
    pending = models.DecimalField(**MONEY, default=0,
                                  help_text="Requested for withdrawal; still slashable.")
    unlock_at = models.DateTimeField(null=True, blank=True,
                                     help_text="When the pending stake can be withdrawn.")
    slashed_total = models.DecimalField(**MONEY, default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["organization_id", "address"]

    def __str__(self) -> str:
        return f"stake of {self.address}: {self.staked} tUSD (+{self.pending} pending)"

    @property
    def at_stake(self):
        return self.staked + self.pending


class StakeEvent(models.Model):
    """An event of the stake contract, once per log (the indexer re-reads ranges after a crash)."""

    class Kind(models.TextChoices):
        STAKED = "staked", "Staked"
        WITHDRAWAL_REQUESTED = "withdrawal_requested", "Withdrawal requested"
        WITHDRAWN = "withdrawn", "Withdrawn"
        SLASHED = "slashed", "Slashed"

    stake = models.ForeignKey(ProviderStake, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=24, choices=Kind.choices)
    amount = models.DecimalField(**MONEY)
    dispute = models.ForeignKey(Dispute, on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="stake_events")
    recipient = models.CharField(max_length=42, blank=True)
    reason_code = models.PositiveSmallIntegerField(null=True, blank=True)
    tx_hash = models.CharField(max_length=66)
    log_index = models.PositiveIntegerField()
    block_number = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-block_number", "-log_index"]
        constraints = [models.UniqueConstraint(fields=["tx_hash", "log_index"],
                                               name="one_stake_event_per_log")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.amount} tUSD ({self.tx_hash[:12]}…)"


class StakeOperation(models.Model):
    """A stake, withdrawal request or withdrawal a provider asked for from its custodial
    wallet. `request_id` makes a retried request (a double click, an API retry) a no-op."""

    class Kind(models.TextChoices):
        STAKE = "stake", "Stake"
        REQUEST_WITHDRAWAL = "request_withdrawal", "Request withdrawal"
        WITHDRAW = "withdraw", "Withdraw"

    organization = models.ForeignKey("marketplace.Organization", on_delete=models.CASCADE,
                                     related_name="stake_operations")
    request_id = models.UUIDField(unique=True)
    kind = models.CharField(max_length=24, choices=Kind.choices)
    amount = models.DecimalField(**MONEY, null=True, blank=True)
    address = models.CharField(max_length=42)
    transaction = models.ForeignKey("marketplace.ChainTransaction", on_delete=models.PROTECT,
                                    related_name="stake_operations")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.amount or ''} by {self.organization_id}"


class DisputeSlash(models.Model):
    """The slash the operator sends for one dispute: created with its transaction, so a
    retried task finds it and never sends a second (the contract refuses a second slash
    for the same `key` as well)."""

    dispute = models.OneToOneField(Dispute, on_delete=models.CASCADE, related_name="slash")
    key = models.CharField(max_length=66, unique=True,
                           help_text="The dispute id on the chain (bytes32, hex).")
    provider_address = models.CharField(max_length=42, blank=True)
    recipient = models.CharField(max_length=42, blank=True)
    amount = models.DecimalField(**MONEY, null=True, blank=True, help_text="Asked for; the chain caps it.")
    transaction = models.ForeignKey("marketplace.ChainTransaction", on_delete=models.PROTECT, null=True,
                                    blank=True, related_name="dispute_slashes")
    note = models.CharField(max_length=500, blank=True, help_text="Why no slash went out (yet).")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"slash for dispute {self.dispute_id}"


class NodeUptime(models.Model):
    """One stretch of a node's agent being connected (hello → heartbeats stop or it leaves):
    written on each online/offline change, read by services/reputation.py for uptime."""

    node = models.ForeignKey("marketplace.Node", on_delete=models.CASCADE, related_name="uptimes")
    online_from = models.DateTimeField()
    online_until = models.DateTimeField(null=True, blank=True, help_text="Empty: online now.")

    class Meta:
        ordering = ["node_id", "online_from"]
        indexes = [models.Index(fields=["node", "online_until"], name="node_uptime_open")]
        constraints = [models.UniqueConstraint(fields=["node"], condition=Q(online_until__isnull=True),
                                               name="one_open_uptime_per_node")]

    def __str__(self) -> str:
        return f"node {self.node_id} online {self.online_from:%Y-%m-%d %H:%M} – {self.online_until or 'now'}"


class ConsumerDispute(models.Model):
    """A consumer's complaint about a finished job, with its reason; staff resolve it in the
    admin (services/disputes.py): refund the consumer, slash the providers' stake (through
    a `Dispute` per provider, the staking service's way), or reject it."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        REFUNDED = "refunded", "Refunded"
        SLASHED = "slashed", "Provider slashed"
        REJECTED = "rejected", "Rejected"

    job = models.ForeignKey("marketplace.Job", on_delete=models.CASCADE, related_name="consumer_disputes")
    organization = models.ForeignKey("marketplace.Organization", on_delete=models.CASCADE,
                                     related_name="consumer_disputes")
    opened_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                  related_name="+")
    reason = models.TextField(max_length=2000)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    resolution = models.CharField(max_length=2000, blank=True, help_text="Staff's note on the decision.")
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                    blank=True, related_name="+")
    refund_amount = models.DecimalField(**MONEY, null=True, blank=True)
    refund_tx = models.CharField(max_length=66, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["job"], condition=Q(status="open"),
                                               name="one_open_consumer_dispute_per_job")]
        indexes = [models.Index(fields=["status", "-created_at"], name="consumer_dispute_status")]

    def __str__(self) -> str:
        return f"consumer dispute #{self.pk} on job {self.job_id} ({self.status})"


class ComplianceEvidence(models.Model):
    """What a staff member saw before verifying a node's compliance tags: a document and a
    note, with who verified which tags when (services/nodes.py node_verify_compliance)."""

    node = models.ForeignKey("marketplace.Node", on_delete=models.CASCADE, related_name="compliance_evidence")
    tags = models.JSONField(default=list, help_text="The tags verified on this evidence.")
    document = models.FileField(upload_to="compliance/%Y/%m/")
    document_name = models.CharField(max_length=200, blank=True)
    note = models.TextField(max_length=2000)
    verified_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                    related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"evidence for {', '.join(self.tags)} on node {self.node_id}"
