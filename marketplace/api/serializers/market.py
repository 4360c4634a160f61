"""Templates, offers and nodes: how they are shown and what a provider may send."""

from decimal import Decimal

from rest_framework import serializers

from ... import catalogue
from ...errors import MarketError
from ...models import Node, Offer
from ...services.nodes import NodeSpec
from ...services.offers import OfferSpec
from .common import MAX_ID, MONEY, SMALL, UNIT, _tags

# --- Templates -----------------------------------------------------------------------

class TemplateSerializer(serializers.Serializer):
    name = serializers.CharField()
    title = serializers.CharField()
    sector = serializers.CharField()
    description = serializers.CharField()
    metric = serializers.CharField()
    dataset_kind = serializers.CharField()
    params_schema = serializers.JSONField()
    defaults = serializers.SerializerMethodField()
    samples = serializers.ListField(child=serializers.DictField())

    def get_defaults(self, template: catalogue.Template) -> dict:
        return template.defaults()


# --- Offers --------------------------------------------------------------------------

class OfferSerializer(serializers.ModelSerializer):
    node_name = serializers.CharField(source="node.name", read_only=True)
    provider = serializers.CharField(source="provider.name", read_only=True)
    gpus_available = serializers.IntegerField(read_only=True)
    unit = serializers.SerializerMethodField()
    region_name = serializers.SerializerMethodField()
    compliance = serializers.ListField(source="compliance_tags", child=serializers.CharField(),
                                       read_only=True)
    is_new = serializers.SerializerMethodField()
    online = serializers.BooleanField(source="node_online", read_only=True)

    class Meta:
        model = Offer
        fields = ["id", "node", "node_name", "provider", "gpu_model", "gpu_memory_gb",
                  "gpus_offered", "gpus_available", "price_per_gpu_hour", "unit", "region",
                  "region_name", "compliance", "reliability", "is_new", "online", "provider_stake",
                  "available_from", "available_until", "min_duration_hours",
                  "max_duration_hours", "accepts_custom_code", "status"]
        read_only_fields = fields

    def get_unit(self, offer: Offer) -> str:
        return UNIT

    def get_region_name(self, offer: Offer) -> str:
        return catalogue.REGIONS.get(offer.region, offer.region)

    def get_is_new(self, offer: Offer) -> bool:
        return offer.reliability is None


class OfferListSerializer(OfferSerializer):
    """The same fields as OfferSerializer, built directly: the public search renders many
    rows per request, and DRF's per-field machinery was a third of its time."""

    def to_representation(self, o: Offer) -> dict:
        price = o.price_per_gpu_hour
        return {
            "id": o.pk, "node": o.node_id, "node_name": o.node.name, "provider": o.provider.name,
            "gpu_model": o.gpu_model, "gpu_memory_gb": o.gpu_memory_gb,
            "gpus_offered": o.gpus_offered, "gpus_available": o.gpus_offered - o.gpus_reserved,
            "price_per_gpu_hour": f"{price:.6f}", "unit": UNIT, "region": o.region,
            "region_name": catalogue.REGIONS.get(o.region, o.region),
            "compliance": o.compliance_tags,
            "reliability": f"{o.reliability:.4f}" if o.reliability is not None else None,
            "is_new": o.reliability is None, "online": o.node_online,
            "provider_stake": f"{o.provider_stake:.6f}",
            "available_from": _iso(o.available_from), "available_until": _iso(o.available_until),
            "min_duration_hours": f"{o.min_duration_hours:.2f}",
            "max_duration_hours": f"{o.max_duration_hours:.2f}" if o.max_duration_hours is not None else None,
            "accepts_custom_code": o.accepts_custom_code,
            "status": o.status,
        }


def _iso(value) -> str | None:
    return serializers.DateTimeField().to_representation(value) if value is not None else None


class OfferWriteSerializer(serializers.Serializer):
    """Create takes `node`; update (PUT/PATCH) keeps the offer on its node."""

    node = serializers.IntegerField(min_value=1, max_value=MAX_ID,
                                    help_text="One of your nodes (create only).")
    gpus_offered = serializers.IntegerField(min_value=1, max_value=SMALL)
    price_per_gpu_hour = serializers.DecimalField(**MONEY, help_text="tUSD per GPU-hour.")
    available_from = serializers.DateTimeField(required=False, allow_null=True)
    available_until = serializers.DateTimeField(required=False, allow_null=True)
    min_duration_hours = serializers.DecimalField(max_digits=8, decimal_places=2,
                                                  required=False, default=Decimal("0.25"))
    max_duration_hours = serializers.DecimalField(max_digits=8, decimal_places=2,
                                                  required=False, allow_null=True)
    accepts_custom_code = serializers.BooleanField(
        required=False, default=False,
        help_text="Run consumers' own code (code bundles) in the agent's sandbox on this offer.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance is not None:
            self.fields.pop("node")

    def to_spec(self, base: Offer | None = None) -> OfferSpec:
        data = dict(self.validated_data)
        if base is not None and self.partial:
            for name in self.fields:
                data.setdefault(name, getattr(base, name))
        return OfferSpec(
            gpus_offered=data["gpus_offered"], price_per_gpu_hour=data["price_per_gpu_hour"],
            available_from=data.get("available_from"),
            available_until=data.get("available_until"),
            min_duration_hours=data.get("min_duration_hours", Decimal("0.25")),
            max_duration_hours=data.get("max_duration_hours"),
            accepts_custom_code=data.get("accepts_custom_code", False),
        )


# --- Nodes ---------------------------------------------------------------------------

class NodeSerializer(serializers.ModelSerializer):
    compliance_claimed = serializers.ListField(source="claimed_tags",
                                               child=serializers.CharField(), read_only=True)
    compliance_verified = serializers.ListField(source="verified_tags",
                                                child=serializers.CharField(), read_only=True)

    class Meta:
        model = Node
        fields = ["id", "name", "gpu_model", "gpu_count", "gpu_memory_gb", "cpu_cores", "ram_gb",
                  "disk_gb", "bandwidth_mbps", "region", "compliance_claimed",
                  "compliance_verified", "status", "last_heartbeat_at", "benchmark_tflops",
                  "agent_version", "runtime", "reliability", "is_new", "reliability_detail",
                  "reliability_at",
                  "token_prefix", "created_at"]
        read_only_fields = fields

    is_new = serializers.SerializerMethodField(help_text="Too little history for a reliability yet.")

    def get_is_new(self, node: Node) -> bool:
        return node.reliability is None


class NodeWithTokenSerializer(NodeSerializer):
    agent_token = serializers.SerializerMethodField(
        help_text="The agent's token. Shown this once; only its hash is stored.")

    class Meta(NodeSerializer.Meta):
        fields = [*NodeSerializer.Meta.fields, "agent_token"]
        read_only_fields = fields

    def get_agent_token(self, node: Node) -> str:
        return self.context["agent_token"]


class NodeWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=80)
    gpu_model = serializers.CharField(max_length=32,
                                      help_text=f"One of: {', '.join(catalogue.GPU_MODELS)}.")
    gpu_count = serializers.IntegerField(min_value=1, max_value=64)
    gpu_memory_gb = serializers.IntegerField(
        min_value=0, max_value=1024, required=False, allow_null=True,
        help_text="Per GPU; defaults to the model's memory. 0 for cpu nodes.")
    cpu_cores = serializers.IntegerField(min_value=1, max_value=4096)
    ram_gb = serializers.IntegerField(min_value=1, max_value=65536)
    disk_gb = serializers.IntegerField(min_value=1, max_value=10**7)
    bandwidth_mbps = serializers.IntegerField(min_value=1, max_value=10**7, required=False,
                                              allow_null=True)
    region = serializers.CharField(max_length=8, help_text="A region code such as EU-DE.")
    compliance_claimed = _tags()

    def validate_compliance_claimed(self, value: list[str]) -> list[str]:
        try:
            catalogue.compliance_mask(value)
        except MarketError as exc:
            raise serializers.ValidationError(exc.message) from None
        return value

    def to_spec(self, base: Node | None = None) -> NodeSpec:
        data = dict(self.validated_data)
        if base is not None and self.partial:
            current = {name: getattr(base, name) for name in self.fields
                       if name != "compliance_claimed"}
            current["compliance_claimed"] = base.claimed_tags
            if data.get("gpu_model", base.gpu_model) != base.gpu_model:
                current["gpu_memory_gb"] = None  # the new model's memory unless given
            data = {**current, **data}
        return NodeSpec(
            name=data["name"], gpu_model=data["gpu_model"], gpu_count=data["gpu_count"],
            gpu_memory_gb=data.get("gpu_memory_gb"), cpu_cores=data["cpu_cores"],
            ram_gb=data["ram_gb"], disk_gb=data["disk_gb"], region=data["region"],
            compliance=tuple(data.get("compliance_claimed") or ()),
            bandwidth_mbps=data.get("bandwidth_mbps"),
        )
