"""Admin for offers: created, changed, paused and resumed through the offer services."""

from django.contrib import admin, messages
from django.db.models import Q, QuerySet

from ..errors import MarketError
from ..models import Node, Offer, Organization
from ..services.offers import OfferSpec, offer_create, offer_set_status, offer_spec_validate, offer_update
from .common import (
    GpuModelFilter,
    RegionFilter,
    ServiceValidatedForm,
    form_error,
    price,
    reliability,
    tags,
)

SEARCH_LIMIT = 1000  # nodes or providers a search term may match before it is too vague
OFFER_FIELDS = ["node", "gpus_offered", "price_per_gpu_hour", "available_from",
                "available_until", "min_duration_hours", "max_duration_hours"]


class OfferAdminForm(ServiceValidatedForm):
    class Meta:
        model = Offer
        fields = OFFER_FIELDS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["available_from"].required = False
        self.fields["available_from"].help_text = "Leave empty for now."
        self.fields["price_per_gpu_hour"].help_text = "tUSD per GPU-hour."

    def spec(self) -> OfferSpec:
        data = self.cleaned_data
        return OfferSpec(
            gpus_offered=data.get("gpus_offered"),
            price_per_gpu_hour=data.get("price_per_gpu_hour"),
            available_from=data.get("available_from"),
            available_until=data.get("available_until"),
            min_duration_hours=data.get("min_duration_hours"),
            max_duration_hours=data.get("max_duration_hours"),
        )

    def node(self) -> Node:
        return self.instance.node if self.instance.pk else self.cleaned_data["node"]

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            offer_spec_validate(spec=self.spec(), node=self.node(),
                                offer=self.instance if self.instance.pk else None)
        except MarketError as exc:
            raise form_error(exc, self) from None
        return data


@admin.register(Offer)
class OfferAdmin(admin.ModelAdmin):
    form = OfferAdminForm
    list_display = ["id", "node", "provider", "gpus", "price_display", "status", "node_online",
                    "verified", "reliability_display", "available_until"]
    list_filter = ["status", "node_online", GpuModelFilter, RegionFilter]
    search_fields = ["=id", "node__name", "provider__name"]
    list_select_related = ["node", "provider"]
    autocomplete_fields = ["node"]
    # The primary key index serves this order; the default (price, id) would sort the table.
    ordering = ["-id"]
    list_per_page = 50
    show_full_result_count = False
    actions = ["pause_offers", "resume_offers"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return OFFER_FIELDS
        return OFFER_FIELDS + ["status", "status_reason", "gpus_reserved", "provider", "gpu_model",
                               "gpu_memory_gb", "region", "verified", "reliability_display",
                               "node_online", "created_at", "updated_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        # Status changes through the actions; the rest is copied from the node by the
        # node services, and reservations belong to matching.
        return ["node", "status", "status_reason", "gpus_reserved", "provider", "gpu_model", "gpu_memory_gb",
                "region", "verified", "reliability_display", "node_online", "created_at",
                "updated_at"]

    def get_search_results(self, request, queryset, search_term):
        # Find the matching nodes and providers first, then their offers by the indexed
        # foreign keys. Django's default (join + LIKE over every offer, ordered by id) read
        # the whole table: see docs/BENCHMARKS.md for the measurement.
        term = search_term.strip()
        if not term:
            return queryset, False
        nodes = list(Node.objects.filter(name__icontains=term).values_list("pk", flat=True)
                     [:SEARCH_LIMIT])
        providers = list(Organization.objects.filter(name__icontains=term)
                         .values_list("pk", flat=True)[:SEARCH_LIMIT])
        match = Q(node_id__in=nodes) | Q(provider_id__in=providers)
        if term.isdigit():
            match |= Q(pk=int(term))
        return queryset.filter(match), False

    @admin.display(description="GPUs free / offered", ordering="gpus_offered")
    def gpus(self, obj: Offer) -> str:
        return f"{obj.gpus_available} / {obj.gpus_offered}"

    @admin.display(description="price", ordering="price_per_gpu_hour")
    def price_display(self, obj: Offer) -> str:
        return price(obj.price_per_gpu_hour)

    @admin.display(description="verified tags")
    def verified(self, obj: Offer) -> str:
        return tags(obj.compliance_verified)

    @admin.display(description="reliability", ordering="reliability")
    def reliability_display(self, obj: Offer) -> str:
        return reliability(obj.reliability)

    def save_model(self, request, obj, form, change):
        node = form.node()
        if change:
            offer_update(provider=node.provider, offer=Offer.objects.get(pk=obj.pk),
                         spec=form.spec())
        else:
            obj.pk = offer_create(provider=node.provider, node=node, spec=form.spec()).pk
        obj.refresh_from_db()

    def has_delete_permission(self, request, obj=None):
        # Offers are referenced by reservations and history; pause instead.
        return False

    def _set_status(self, request, queryset: QuerySet[Offer], status: str, verb: str):
        changed, refused = 0, []
        for offer in queryset.exclude(status=status).select_related("node"):
            try:
                offer_set_status(provider=None, offer=offer, status=status)
            except MarketError as exc:
                refused.append(f"offer #{offer.pk}: {exc.message}")
            else:
                changed += 1
                self.log_change(request, offer, f"{verb} from the admin")
        self.message_user(request, f"{verb} {changed} offer(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not changed: " + "; ".join(refused), messages.ERROR)

    @admin.action(description="Pause selected offers", permissions=["change"])
    def pause_offers(self, request, queryset):
        self._set_status(request, queryset, Offer.Status.PAUSED, "Paused")

    @admin.action(description="Resume selected offers", permissions=["change"])
    def resume_offers(self, request, queryset):
        self._set_status(request, queryset, Offer.Status.ACTIVE, "Resumed")
