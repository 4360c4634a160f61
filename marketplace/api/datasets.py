"""The REST API of datasets: a bounded multipart upload (with Idempotency-Key), the
list and delete."""


from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.exceptions import APIException, NotFound
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from ..models import Dataset
from ..selectors.accounts import organization_of, require_consumer
from ..services import datasets as dataset_services
from . import serializers as s
from .common import AUTH, ID, IDEMPOTENCY_HEADER, _errors, _idempotent, _multipart_payload
from .permissions import IsConsumer

# --- Datasets ------------------------------------------------------------------------

class UploadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The upload is too large."
    default_code = "too_large"


class BoundedMultiPartParser(MultiPartParser):
    """Refuses, before reading it, a body that cannot hold an acceptable dataset."""

    limit_setting = "DATASET_MAX_BYTES"

    def parse(self, stream, media_type=None, parser_context=None):
        request = parser_context["request"]
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        most = getattr(settings, self.limit_setting)
        limit = most + 64 * 1024  # room for the multipart envelope
        if length > limit:
            raise UploadTooLarge(f"file: the upload is larger than the "
                                 f"{most // 1_048_576} MB limit.")
        return super().parse(stream, media_type, parser_context)


@extend_schema_view(
    list=extend_schema(summary="Your organization's datasets"),
    create=extend_schema(summary="Upload a CSV dataset", request={
        "multipart/form-data": s.DatasetUploadSerializer}, parameters=[IDEMPOTENCY_HEADER],
        responses={201: s.DatasetSerializer, **_errors(400, 401, 403, 413, 422)}),
    destroy=extend_schema(summary="Delete a dataset and its stored file",
                          responses={204: None, **_errors(401, 403, 404, 409)}),
)
class DatasetViewSet(mixins.ListModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    authentication_classes = AUTH
    serializer_class = s.DatasetSerializer
    permission_classes = [IsConsumer]
    parser_classes = [BoundedMultiPartParser]
    lookup_value_regex = ID

    def get_queryset(self):
        org = organization_of(self.request.user)
        return org.datasets.all() if org is not None else Dataset.objects.none()

    def create(self, request):
        owner = require_consumer(request.user)

        def upload() -> Response:
            data = s.DatasetUploadSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            dataset = dataset_services.dataset_upload(
                owner=owner, actor=request.user, uploaded_file=data.validated_data["file"],
                name=data.validated_data.get("name", ""),
                label_column=data.validated_data.get("label_column", ""))
            return Response(s.DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)

        return _idempotent(request, lambda: _multipart_payload(request.data), upload)

    def get_object(self) -> Dataset:
        dataset = self.get_queryset().filter(pk=self.kwargs["pk"]).first()
        if dataset is None:
            raise NotFound("No dataset with that id among your organization's datasets.")
        return dataset

    def destroy(self, request, pk=None):
        """Only your organization's datasets (another's is not found); refused (409) while
        a job that has not finished uses it."""
        dataset_services.dataset_delete(dataset=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
