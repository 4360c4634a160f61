"""Datasets, resumable uploads, code bundles and provider runtimes."""


from django.conf import settings
from rest_framework import serializers

from ... import runtimes
from ...models import Dataset
from .common import MAX_ID

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
                                 ".csv or .zip for a dataset (.pt or .pth: a fine-tune's "
                                 "weights, a torch state_dict); .py, .zip, .tar, .tar.gz or .tgz "
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
