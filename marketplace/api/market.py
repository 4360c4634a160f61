"""The REST API of the market: templates, offers (public search, a provider's own) and
nodes. Thin views: a serializer parses, a service or a selector does the work."""


from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from .. import catalogue
from ..selectors.accounts import require_provider
from ..selectors.market import nodes_of_provider, offers_of_provider, offers_visible_to
from ..services import nodes as node_services
from ..services import offers as offer_services
from . import serializers as s
from .common import AUTH, ID, _errors
from .filters import MAX_INT, OfferFilter
from .pagination import IdSubqueryPagination
from .permissions import IsProvider

# The filters' bounds, which django-filter does not put into the schema.
OFFER_FILTER_SCHEMAS = [
    OpenApiParameter("min_gpus", {"type": "integer", "minimum": 1, "maximum": MAX_INT},
                     description="At least this many free GPUs (CPU slots for cpu)."),
    OpenApiParameter("min_gpu_memory_gb", {"type": "integer", "minimum": 0, "maximum": MAX_INT},
                     description="Memory per GPU, GB, at least."),
    OpenApiParameter("max_price", {"type": "string", "pattern": r"^[0-9]{1,14}(\.[0-9]{1,6})?$"},
                     description="Price per GPU-hour in tUSD, at most (more than 0, 6 places)."),
    OpenApiParameter("min_reliability", {"type": "string",
                                         "pattern": r"^(0(\.[0-9]{1,4})?|1(\.0{1,4})?)$"},
                     description="Share 0–1 (4 places); excludes new nodes."),
]


# --- Templates -----------------------------------------------------------------------

@extend_schema_view(
    list=extend_schema(summary="Training templates", responses=s.TemplateSerializer(many=True)),
    retrieve=extend_schema(summary="One training template",
                           responses={200: s.TemplateSerializer, **_errors(404)}),
)
class TemplateViewSet(viewsets.ViewSet):
    authentication_classes = AUTH
    permission_classes = [AllowAny]
    lookup_field = "name"
    lookup_value_regex = r"[a-z0-9-]{1,64}"
    serializer_class = s.TemplateSerializer

    def list(self, request):
        return Response(s.TemplateSerializer(catalogue.templates().values(), many=True).data)

    def retrieve(self, request, name: str):
        template = catalogue.templates().get(name)
        if template is None:
            raise NotFound(f"No template named '{name}'.")
        return Response(s.TemplateSerializer(template).data)


# --- Offers --------------------------------------------------------------------------

@extend_schema_view(
    list=extend_schema(summary="Search offers (public)", parameters=OFFER_FILTER_SCHEMAS),
    retrieve=extend_schema(summary="One offer", responses={200: s.OfferSerializer,
                                                           **_errors(404)}),
    create=extend_schema(summary="List one of your nodes' GPUs for rent",
                         request=s.OfferWriteSerializer,
                         responses={201: s.OfferSerializer, **_errors(400, 401, 403)}),
    update=extend_schema(request=s.OfferWriteSerializer,
                         responses={200: s.OfferSerializer, **_errors(400, 401, 403, 404)}),
    partial_update=extend_schema(request=s.OfferWriteSerializer,
                                 responses={200: s.OfferSerializer,
                                            **_errors(400, 401, 403, 404)}),
)
class OfferViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    authentication_classes = AUTH
    serializer_class = s.OfferSerializer

    def get_serializer_class(self):
        return s.OfferListSerializer if self.action in ("list", "mine") else s.OfferSerializer
    filter_backends = [DjangoFilterBackend]
    filterset_class = OfferFilter
    pagination_class = IdSubqueryPagination
    lookup_value_regex = ID
    http_method_names = ["get", "post", "put", "patch", "head", "options"]

    def get_permissions(self):
        if self.action in ("list", "retrieve"):
            return [AllowAny()]
        return [IsProvider()]

    def get_queryset(self):
        if self.action == "list":
            # The public search: active offers only, even for their provider.
            qs = offers_visible_to(None)
        elif self.action == "retrieve":
            qs = offers_visible_to(self.request.user)
        else:
            qs = offers_of_provider(self.request.user)
        return qs.select_related("node", "provider")

    def _render(self, offer, code=status.HTTP_200_OK) -> Response:
        offer = offers_of_provider(self.request.user).select_related("node", "provider").get(
            pk=offer.pk)
        return Response(s.OfferSerializer(offer).data, status=code)

    def create(self, request):
        provider = require_provider(request.user)
        data = s.OfferWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node = nodes_of_provider(request.user).filter(pk=data.validated_data["node"]).first()
        if node is None:
            raise ValidationError({"node": ["No node of yours has that id."]})
        offer = offer_services.offer_create(provider=provider, node=node, spec=data.to_spec())
        return self._render(offer, status.HTTP_201_CREATED)

    def update(self, request, pk=None, partial=False):
        provider = require_provider(request.user)
        offer = self.get_object()
        data = s.OfferWriteSerializer(offer, data=request.data, partial=partial)
        data.is_valid(raise_exception=True)
        offer = offer_services.offer_update(provider=provider, offer=offer,
                                            spec=data.to_spec(offer))
        return self._render(offer)

    def partial_update(self, request, pk=None):
        return self.update(request, pk, partial=True)

    def _set_status(self, status_value: str) -> Response:
        provider = require_provider(self.request.user)
        offer = offer_services.offer_set_status(provider=provider, offer=self.get_object(),
                                                status=status_value)
        return self._render(offer)

    @extend_schema(summary="Your organization's offers, paused ones included",
                   parameters=OFFER_FILTER_SCHEMAS,
                   responses={200: s.OfferListSerializer(many=True), **_errors(400, 401, 403)})
    @action(detail=False, methods=["get"])
    def mine(self, request):
        """The provider's own offers in any status (`status` says which), with the search's
        filters and ordering; the public search lists active offers only."""
        return self.list(request)

    @extend_schema(request=None, responses={200: s.OfferSerializer,
                                            **_errors(401, 403, 404)})
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        """Take the offer off the market; running jobs keep their reservations."""
        return self._set_status("paused")

    @extend_schema(request=None, responses={200: s.OfferSerializer,
                                            **_errors(401, 403, 404)})
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._set_status("active")


# --- Nodes ---------------------------------------------------------------------------

@extend_schema_view(
    list=extend_schema(summary="Your nodes"),
    retrieve=extend_schema(responses={200: s.NodeSerializer, **_errors(401, 403, 404)}),
    create=extend_schema(summary="Register a machine; the response carries its agent token once",
                         request=s.NodeWriteSerializer,
                         responses={201: s.NodeWithTokenSerializer, **_errors(400, 401, 403)}),
    update=extend_schema(request=s.NodeWriteSerializer,
                         responses={200: s.NodeSerializer, **_errors(400, 401, 403, 404)}),
    partial_update=extend_schema(request=s.NodeWriteSerializer,
                                 responses={200: s.NodeSerializer,
                                            **_errors(400, 401, 403, 404)}),
)
class NodeViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    authentication_classes = AUTH
    serializer_class = s.NodeSerializer
    permission_classes = [IsProvider]
    lookup_value_regex = ID
    http_method_names = ["get", "post", "put", "patch", "head", "options"]

    def get_queryset(self):
        return nodes_of_provider(self.request.user).order_by("name", "id")

    def create(self, request):
        provider = require_provider(request.user)
        data = s.NodeWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node, token = node_services.node_create(provider=provider, spec=data.to_spec(),
                                                actor=request.user)
        body = s.NodeWithTokenSerializer(node, context={"agent_token": token}).data
        return Response(body, status=status.HTTP_201_CREATED)

    def update(self, request, pk=None, partial=False):
        node = self.get_object()
        data = s.NodeWriteSerializer(data=request.data, partial=partial)
        data.is_valid(raise_exception=True)
        node = node_services.node_update(node=node, spec=data.to_spec(node), actor=request.user)
        return Response(s.NodeSerializer(node).data)

    def partial_update(self, request, pk=None):
        return self.update(request, pk, partial=True)

    @extend_schema(request=None, responses={200: s.NodeWithTokenSerializer,
                                            **_errors(401, 403, 404)})
    @action(detail=True, methods=["post"], url_path="rotate-token")
    def rotate_token(self, request, pk=None):
        """Issue a new agent token (shown this once); the old one stops working."""
        node = self.get_object()
        token = node_services.node_rotate_token(node=node, actor=request.user)
        return Response(s.NodeWithTokenSerializer(node, context={"agent_token": token}).data)
