"""Resumable uploads, code bundles and provider runtimes (issue 16). Thin views: the
services (services/uploads.py, services/bundles.py) own the rules and their messages."""

import hashlib
import os
import tempfile

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.parsers import BaseParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from .. import runtimes
from ..errors import MarketError
from ..models import CodeBundle, Upload
from ..selectors.accounts import organization_of, require_consumer
from ..services import bundles as bundle_services
from ..services import uploads as upload_services
from ..services.datasets import storage_quota_check
from . import serializers as s
from .common import AUTH, ID, _errors
from .datasets import BoundedMultiPartParser
from .parsers import DepthLimitedJSONParser
from .permissions import IsConsumer

UUID = r"[0-9a-fA-F-]{36}"
OFFSET_HEADER = "Upload-Offset"
CHUNK_TYPE = "application/offset+octet-stream"
# tus's media type, or the generic one (clients and tools that know only it).
CHUNK_TYPES = (CHUNK_TYPE, "application/octet-stream")


class BundleMultiPartParser(BoundedMultiPartParser):
    limit_setting = "BUNDLE_MAX_BYTES"


class ChunkParser(BaseParser):
    """Declares the chunk's media type; the view reads the body itself, streamed to disk."""

    media_type = CHUNK_TYPE

    def parse(self, stream, media_type=None, parser_context=None):
        return {}


class OctetChunkParser(ChunkParser):
    media_type = "application/octet-stream"


def _offset_headers(response: Response, upload: Upload) -> Response:
    response[OFFSET_HEADER] = str(upload.offset)
    response["Upload-Length"] = str(upload.size_bytes)
    response["Cache-Control"] = "no-store"
    return response


def _int_header(request, name: str) -> int:
    raw = request.headers.get(name, "")
    if not raw.isdigit() or len(raw) > 18:
        raise MarketError(f"Send the {name} header: a whole number of bytes.", field=name)
    return int(raw)


@extend_schema_view(
    list=extend_schema(summary="Your organization's unfinished uploads (to resume one)",
                       responses={200: s.UploadSerializer(many=True), **_errors(401, 403)}),
    create=extend_schema(
        summary="Start a resumable upload of a dataset or a code bundle",
        request=s.UploadCreateSerializer,
        responses={201: s.UploadSerializer, **_errors(400, 401, 403, 413)}),
    retrieve=extend_schema(
        summary="An upload's offset (also as the Upload-Offset header; HEAD works too)",
        responses={200: s.UploadSerializer, **_errors(401, 403, 404)}),
    destroy=extend_schema(summary="Abandon an unfinished upload (its bytes are deleted)",
                          responses={204: None, **_errors(401, 403, 404)}),
)
class UploadViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """tus-like: POST to create (size and SHA-256), PATCH chunks with `Upload-Offset` and
    `Content-Type: application/offset+octet-stream`, HEAD for the offset after a break,
    POST finish/ to check the SHA-256 and make the dataset or bundle."""

    authentication_classes = AUTH
    permission_classes = [IsConsumer]
    serializer_class = s.UploadSerializer
    pagination_class = None
    lookup_value_regex = UUID
    parser_classes = [ChunkParser]

    def get_parsers(self):
        if getattr(self, "action", None) == "partial_update" or self.request is None:
            return [ChunkParser(), OctetChunkParser()]
        return [DepthLimitedJSONParser()]

    def get_queryset(self):
        org = organization_of(self.request.user)
        if org is None:
            return Upload.objects.none()
        return Upload.objects.filter(owner=org)

    def list(self, request):
        uploads = self.get_queryset().filter(status=Upload.Status.OPEN).order_by("-created_at")[:100]
        return Response(s.UploadSerializer(uploads, many=True).data)

    def get_object(self) -> Upload:
        upload = self.get_queryset().filter(pk=self.kwargs["pk"]).first()
        if upload is None:
            raise NotFound("No upload with that id among your organization's uploads.")
        return upload

    def create(self, request):
        owner = require_consumer(request.user)
        data = s.UploadCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        d = data.validated_data
        upload = upload_services.upload_create(
            owner=owner, actor=request.user, purpose=d["purpose"], name=d["name"],
            size=d["size_bytes"], sha256=d["sha256"],
            options={k: d.get(k) for k in ("label_column", "runtime", "entry", "params_schema")})
        response = Response(s.UploadSerializer(upload).data, status=status.HTTP_201_CREATED)
        response["Location"] = f"/api/v1/uploads/{upload.pk}/"
        return _offset_headers(response, upload)

    def retrieve(self, request, pk=None):
        upload = self.get_object()
        return _offset_headers(Response(s.UploadSerializer(upload).data), upload)

    @extend_schema(
        summary="Send a chunk at Upload-Offset (written whole or not at all)",
        parameters=[OpenApiParameter(OFFSET_HEADER, {"type": "integer", "minimum": 0},
                                     OpenApiParameter.HEADER, required=True,
                                     description="Where this chunk starts: the upload's offset.")],
        request={t: OpenApiTypes.BINARY for t in CHUNK_TYPES},
        responses={204: OpenApiResponse(description="Written; Upload-Offset is the new offset."),
                   **_errors(400, 401, 403, 404, 409, 413)})
    def partial_update(self, request, pk=None):
        upload = self.get_object()
        if request.content_type.split(";")[0].strip() not in CHUNK_TYPES:
            raise MarketError(f"Send a chunk with Content-Type: {CHUNK_TYPE}.",
                              field="Content-Type", code="unsupported_media_type")
        offset = _int_header(request, OFFSET_HEADER)
        length = _int_header(request, "Content-Length")
        upload_services.upload_write(upload=upload, offset=offset, length=length,
                                     read=request._request.read)
        return _offset_headers(Response(status=status.HTTP_204_NO_CONTENT), upload)

    def destroy(self, request, pk=None):
        upload_services.upload_discard(upload=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(summary="Finish: check the SHA-256 and make the dataset or code bundle",
                   request=None,
                   responses={201: OpenApiResponse(OpenApiTypes.OBJECT, description=(
                       "The dataset (as /datasets/) or the bundle (as /bundles/); 200 when "
                       "it was finished before or the same bundle existed.")),
                       200: OpenApiTypes.OBJECT, **_errors(400, 401, 403, 404, 409)})
    @action(detail=True, methods=["post"])
    def finish(self, request, pk=None):
        upload = self.get_object()
        result, created = upload_services.upload_finish(upload=upload, actor=request.user)
        if result is None:
            raise NotFound("What this upload made was deleted since.")
        body = (s.DatasetSerializer(result).data if upload.purpose == Upload.Purpose.DATASET
                else s.BundleSerializer(result).data)
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema_view(
    list=extend_schema(summary="Your organization's code bundles",
                       responses={200: s.BundleSerializer(many=True), **_errors(401, 403)}),
    retrieve=extend_schema(summary="One code bundle",
                           responses={200: s.BundleSerializer, **_errors(401, 403, 404)}),
    create=extend_schema(summary="Upload a code bundle in one request (small bundles; use "
                                 "/uploads/ to resume)",
                         request={"multipart/form-data": s.BundleUploadSerializer},
                         responses={201: s.BundleSerializer, 200: s.BundleSerializer,
                                    **_errors(400, 401, 403, 413)}),
    destroy=extend_schema(summary="Delete a code bundle and its stored file",
                          responses={204: None, **_errors(401, 403, 404, 409)}),
)
class BundleViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    authentication_classes = AUTH
    permission_classes = [IsConsumer]
    serializer_class = s.BundleSerializer
    parser_classes = [BundleMultiPartParser]
    pagination_class = None
    lookup_value_regex = ID

    def get_queryset(self):
        org = organization_of(self.request.user)
        return CodeBundle.objects.filter(owner=org) if org is not None else CodeBundle.objects.none()

    def get_object(self) -> CodeBundle:
        bundle = self.get_queryset().filter(pk=self.kwargs["pk"]).first()
        if bundle is None:
            raise NotFound("No code bundle with that id among your organization's bundles.")
        return bundle

    def retrieve(self, request, pk=None):
        return Response(s.BundleSerializer(self.get_object()).data)

    def create(self, request):
        owner = require_consumer(request.user)
        data = s.BundleUploadSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        d = data.validated_data
        uploaded = d["file"]
        name = os.path.basename(uploaded.name or "") or "task.py"
        bundle_services.bundle_kind(name, field="file")
        if (uploaded.size or 0) > settings.BUNDLE_MAX_BYTES:
            raise upload_services.UploadTooLarge(
                f"The bundle is larger than {settings.BUNDLE_MAX_BYTES // 1_048_576} MB.", field="file")
        # Spooled to a private file: archives are checked from a path (tarfile, zipfile).
        with tempfile.NamedTemporaryFile(prefix="bundle-", suffix=".upload") as f:
            digest = hashlib.sha256()
            for chunk in uploaded.chunks():
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            storage_quota_check(owner, f.tell())
            bundle, created = bundle_services.bundle_store(
                owner=owner, actor=request.user, path=f.name, name=name,
                sha256=digest.hexdigest(), size=f.tell(), runtime=d.get("runtime", ""),
                entry=d.get("entry", ""), params_schema=d.get("params_schema") or None)
        return Response(s.BundleSerializer(bundle).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    def destroy(self, request, pk=None):
        """Refused (409) while a job that has not finished uses it."""
        bundle_services.bundle_delete(bundle=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    list=extend_schema(summary="Provider runtimes a code bundle may ask for",
                       responses={200: s.RuntimeSerializer(many=True)}),
)
class RuntimeViewSet(viewsets.ViewSet):
    authentication_classes = AUTH
    permission_classes = [AllowAny]
    serializer_class = s.RuntimeSerializer

    def list(self, request):
        return Response(s.RuntimeSerializer(runtimes.runtimes().values(), many=True).data)
