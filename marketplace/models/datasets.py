"""What consumers upload: datasets, code bundles and resumable uploads."""

import uuid

from django.conf import settings
from django.db import models

from .accounts import Organization


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
    # of images…) that a code bundle's task reads; `entries` counts its files. Or a model's
    # weights (a torch state_dict, tensors only) that a job starts from: a fine-tune's input,
    # stored like a dataset (content-addressed, encrypted, quota, agent delivery).
    kind = models.CharField(max_length=8, choices=[("csv", "CSV table"), ("zip", "Zip of files"),
                                                   ("weights", "Model weights")],
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
