"""Whether a consumer's own task is deterministic under the runtime's seeding, checked once
per (bundle, dataset, params, world size) before the consumer pays (issue 16)."""

from django.db import models

from .datasets import CodeBundle, Dataset


class DeterminismCheck(models.Model):
    """The verifier replayed a few of the task's steps twice from the same state: the same
    bits twice → its work is verified by step replay; not → by held-out evaluation only
    (a replay could not tell its honest work from a cheat's). The quote, the job page and
    the verification read it; it is keyed by content (SHA-256s and params), so the same
    task on the same data is checked once whatever job or quote asks."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for the verifier"
        RUNNING = "running", "Checking"
        DONE = "done", "Checked"
        ERROR = "error", "Could not be checked"

    key = models.CharField(max_length=64, unique=True,
                           help_text="SHA-256 of bundle SHA-256, dataset, params and world size.")
    # What to run it on; either may be deleted later (the answer stays, keyed by content).
    bundle = models.ForeignKey(CodeBundle, on_delete=models.SET_NULL, null=True, related_name="+")
    dataset = models.ForeignKey(Dataset, on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="+")
    dataset_ref = models.CharField(max_length=64, blank=True)
    params = models.JSONField(default=dict)
    world_size = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    deterministic = models.BooleanField(null=True)
    steps = models.PositiveIntegerField(default=0)
    rel_l2 = models.FloatField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True, help_text="What the check cost.")
    error = models.TextField(blank=True)
    runs = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"determinism check {self.key[:12]}…: {self.status}"
