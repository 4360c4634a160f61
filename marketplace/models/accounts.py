"""Organizations, their members, the audit trail and the API's idempotency keys."""

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


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
