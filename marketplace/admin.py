"""Django admin: the operators' console.

Lists stay fast (`list_select_related`, autocomplete widgets, no DISTINCT-scanning filters
on the big tables, no full-table counts). Every write that the domain owns goes through a
service: nodes and offers are created and changed with their services, suspensions,
compliance verification, pausing and cancelling are actions that call services, and a
job's status is never editable (only `marketplace.job_states` writes it).
"""

from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import F, Q, QuerySet
from django.forms.models import construct_instance
from django.template.defaultfilters import filesizeformat
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from . import catalogue
from .errors import MarketError
from .models import (
    AuditEvent,
    ChainAccount,
    ChainContract,
    ChainCursor,
    ChainTransaction,
    Dataset,
    Escrow,
    Job,
    JobEvent,
    Membership,
    Node,
    Offer,
    Organization,
    Payout,
    PayoutChange,
    Settlement,
    Wallet,
)
from .money import tusd as money  # "1.85 tUSD": the one display rule for amounts
from .services.accounts import organization_create
from .services.jobs import job_cancel
from .services.nodes import (
    NodeSpec,
    node_create,
    node_rotate_token,
    node_spec_validate,
    node_suspend,
    node_unsuspend,
    node_update,
    node_verify_compliance,
)
from .services.offers import OfferSpec, offer_create, offer_set_status, offer_spec_validate, offer_update
from .services.payments import escrow_force_refund, escrow_lost_refund
from .services.suspension import organization_suspend, organization_unsuspend

admin.site.site_header = "ComputeMesh administration"
admin.site.site_title = "ComputeMesh admin"
admin.site.index_title = "Run the network"

EMPTY = "—"


# --- Display helpers -----------------------------------------------------------------
def price(value: Decimal | None) -> str:
    return money(value, "tUSD / GPU-h")


def tags(mask: int) -> str:
    return ", ".join(catalogue.compliance_tags(mask)) or EMPTY


def reliability(value: Decimal | None) -> str:
    # NULL means too little history; the product shows such nodes as "new".
    return "new" if value is None else f"{value * 100:.1f} %"


def _form_error(exc: MarketError, form: forms.Form) -> ValidationError:
    field = exc.field if exc.field in form.fields else None
    return ValidationError({field: exc.message} if field else exc.message)


def fixed_choices_filter(field: str, title: str, choices) -> type[admin.SimpleListFilter]:
    """A list filter whose options come from the catalogue, not from `SELECT DISTINCT` over
    a table with 100k rows (what Django does for a CharField without choices)."""

    class Filter(admin.SimpleListFilter):
        parameter_name = field

        def lookups(self, request, model_admin):
            return list(choices() if callable(choices) else choices)

        def queryset(self, request, queryset):
            value = self.value()
            return queryset.filter(**{field: value}) if value else queryset

    Filter.title = title
    Filter.__name__ = f"{field.title().replace('_', '')}Filter"
    return Filter


class AwaitingVerificationFilter(admin.SimpleListFilter):
    title = "compliance claims"
    parameter_name = "claims"

    def lookups(self, request, model_admin):
        return [("unverified", "Some claims not verified"), ("verified", "All claims verified")]

    def queryset(self, request, queryset):
        if self.value() == "unverified":
            return queryset.exclude(compliance_claimed=F("compliance_verified"))
        if self.value() == "verified":
            return queryset.filter(compliance_claimed=F("compliance_verified"))
        return queryset


GpuModelFilter = fixed_choices_filter("gpu_model", "GPU model",
                                      [(m, m) for m in catalogue.GPU_MODELS])
RegionFilter = fixed_choices_filter("region", "region", sorted(catalogue.REGIONS.items()))


class ReadOnlyAdminMixin:
    """Records (timelines, audit trail) are written by the domain, never by hand."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ViewOnlyWithActionsMixin:
    """View-only pages for rows that only services change (a job's status, an escrow): the
    list keeps the change permission so that its service-backed actions run."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False


class ServiceValidatedForm(forms.ModelForm):
    """A model form whose `clean()` asks the service; the model's own checks would repeat
    the service's errors in worse words (e.g. "Constraint … is violated")."""

    def _post_clean(self):
        self.instance = construct_instance(self, self.instance, self._meta.fields,
                                           self._meta.exclude)


# --- Organizations and memberships ---------------------------------------------------
class OrganizationAddForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ["name", "kind", "sector", "is_verified", "is_suspended"]

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if Organization.objects.filter(name__iexact=name).exists():
            raise ValidationError("An organization with this name exists.")
        return name


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("user")


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "sector", "is_verified", "is_suspended", "created_at"]
    list_filter = ["kind", "sector", "is_verified", "is_suspended"]
    search_fields = ["name", "slug"]
    ordering = ["name"]
    # Suspension goes through its service (the actions): it disconnects the agents, takes the
    # offers off the market and stops running work, which flipping the flag would not.
    readonly_fields = ["slug", "is_suspended", "join_code", "created_at"]
    inlines = [MembershipInline]
    actions = ["suspend_organizations", "unsuspend_organizations"]

    @admin.action(description="Suspend selected organizations (disconnects their agents, takes their "
                              "offers off the market, stops their running work)", permissions=["change"])
    def suspend_organizations(self, request, queryset: QuerySet[Organization]):
        orgs = list(queryset.filter(is_suspended=False))
        for org in orgs:
            organization_suspend(organization=org, actor=request.user,
                                 reason=f"suspended by {request.user.get_username()} in the admin")
        self.message_user(request, f"Suspended {len(orgs)} organization(s).", messages.SUCCESS)

    @admin.action(description="Lift the suspension of selected organizations", permissions=["change"])
    def unsuspend_organizations(self, request, queryset: QuerySet[Organization]):
        orgs = list(queryset.filter(is_suspended=True))
        for org in orgs:
            organization_unsuspend(organization=org, actor=request.user)
        self.message_user(request, f"Lifted the suspension of {len(orgs)} organization(s); their "
                                   "offers stay paused until the providers resume them.", messages.SUCCESS)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = OrganizationAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return OrganizationAddForm.Meta.fields
        return ["name", "slug", "kind", "sector", "is_verified", "is_suspended", "join_code",
                "created_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        # The service picks a unique slug and a join code.
        org = organization_create(name=obj.name, kind=obj.kind, sector=obj.sector)
        if obj.is_verified or obj.is_suspended:
            Organization.objects.filter(pk=org.pk).update(is_verified=obj.is_verified,
                                                          is_suspended=obj.is_suspended)
        obj.pk = org.pk
        obj.refresh_from_db()

    def get_search_results(self, request, queryset, search_term):
        queryset, may_have_duplicates = super().get_search_results(request, queryset,
                                                                   search_term)
        # The node form's provider picker offers provider organizations only.
        if request.GET.get("model_name") == "node" and request.GET.get("field_name") == "provider":
            queryset = queryset.filter(kind=Organization.Kind.PROVIDER)
        return queryset, may_have_duplicates


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "organization_kind", "role", "created_at"]
    list_filter = ["role", "organization__kind"]
    search_fields = ["user__username", "user__email", "organization__name"]
    list_select_related = ["user", "organization"]
    autocomplete_fields = ["user", "organization"]
    ordering = ["-id"]

    @admin.display(description="kind", ordering="organization__kind")
    def organization_kind(self, obj: Membership) -> str:
        return obj.organization.get_kind_display()


# --- Nodes ---------------------------------------------------------------------------
NODE_MACHINE_FIELDS = ["provider", "name", "gpu_model", "gpu_count", "gpu_memory_gb",
                       "cpu_cores", "ram_gb", "disk_gb", "bandwidth_mbps", "region"]


class NodeAdminForm(ServiceValidatedForm):
    compliance = forms.MultipleChoiceField(
        label="Claimed compliance tags", required=False,
        choices=list(catalogue.COMPLIANCE_TAGS.items()), widget=forms.CheckboxSelectMultiple,
        help_text="The provider's claims. Verify them with the action "
                  "“Verify claimed compliance tags”.")

    class Meta:
        model = Node
        fields = NODE_MACHINE_FIELDS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "provider" in self.fields:
            self.fields["provider"].queryset = Organization.objects.filter(
                kind=Organization.Kind.PROVIDER)
        self.fields["gpu_memory_gb"].required = False
        self.fields["gpu_memory_gb"].help_text = (
            "Memory per GPU, GB. Leave empty for the model's standard memory.")
        if self.instance.pk:
            self.initial["compliance"] = self.instance.claimed_tags

    def spec(self) -> NodeSpec:
        data = self.cleaned_data
        return NodeSpec(
            name=data.get("name") or "", gpu_model=data.get("gpu_model") or "",
            gpu_count=data.get("gpu_count"), gpu_memory_gb=data.get("gpu_memory_gb"),
            cpu_cores=data.get("cpu_cores"), ram_gb=data.get("ram_gb"),
            disk_gb=data.get("disk_gb"), region=data.get("region") or "",
            compliance=tuple(data.get("compliance") or ()),
            bandwidth_mbps=data.get("bandwidth_mbps"),
        )

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        provider = self.instance.provider if self.instance.pk else data.get("provider")
        try:
            node_spec_validate(spec=self.spec(), provider=provider,
                               node=self.instance if self.instance.pk else None)
        except MarketError as exc:
            raise _form_error(exc, self) from None
        return data



@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    form = NodeAdminForm
    list_display = ["name", "provider", "hardware", "region", "status", "claimed",
                    "verified", "reliability_display", "last_heartbeat_at", "agent_version"]
    list_filter = ["status", AwaitingVerificationFilter, "gpu_model", "region",
                   "provider__is_verified"]
    search_fields = ["name", "provider__name", "token_prefix"]
    list_select_related = ["provider"]
    autocomplete_fields = ["provider"]
    ordering = ["-id"]
    show_full_result_count = False
    actions = ["suspend_nodes", "unsuspend_nodes", "verify_claimed_compliance",
               "rotate_agent_tokens"]

    def get_fieldsets(self, request, obj=None):
        machine = ("Machine", {"fields": NODE_MACHINE_FIELDS})
        if obj is None:
            return [machine, ("Compliance", {"fields": ["compliance"]})]
        return [
            machine,
            ("Compliance", {"fields": ["compliance", "verified"]}),
            ("Agent and health", {"fields": ["status", "last_heartbeat_at", "agent_version",
                                             "benchmark_tflops", "reliability_display",
                                             "token_prefix", "created_at", "updated_at"]}),
        ]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        # The agent, the watchdog and the actions own these; the token hash is never shown.
        return ["provider", "verified", "status", "last_heartbeat_at", "agent_version",
                "benchmark_tflops", "reliability_display", "token_prefix", "created_at",
                "updated_at"]

    @admin.display(description="hardware", ordering="gpu_model")
    def hardware(self, obj: Node) -> str:
        if obj.is_cpu:
            return f"CPU, {obj.gpu_count} slots, {obj.cpu_cores} cores"
        return f"{obj.gpu_count}× {obj.gpu_model} ({obj.gpu_memory_gb} GB)"

    @admin.display(description="claimed tags")
    def claimed(self, obj: Node) -> str:
        return tags(obj.compliance_claimed)

    @admin.display(description="verified tags")
    def verified(self, obj: Node) -> str:
        return tags(obj.compliance_verified)

    @admin.display(description="reliability", ordering="reliability")
    def reliability_display(self, obj: Node) -> str:
        return reliability(obj.reliability)

    def save_model(self, request, obj, form, change):
        spec = form.spec()
        if change:
            # Re-read the row so that a status the agent changed meanwhile is not undone.
            node_update(node=Node.objects.get(pk=obj.pk), spec=spec, actor=request.user)
        else:
            node, token = node_create(provider=form.cleaned_data["provider"], spec=spec,
                                      actor=request.user)
            obj.pk = node.pk
            self.message_user(request, f"Agent token for {node.name} (shown once; give it to "
                                       f"the provider now): {token}", messages.WARNING)
        obj.refresh_from_db()

    def has_delete_permission(self, request, obj=None):
        # Nodes carry history (offers, assignments, audit); suspend instead.
        return False

    @admin.action(description="Suspend selected nodes (pauses their offers)",
                  permissions=["change"])
    def suspend_nodes(self, request, queryset: QuerySet[Node]):
        nodes = list(queryset.exclude(status=Node.Status.SUSPENDED))
        for node in nodes:
            node_suspend(node=node, actor=request.user,
                         reason=f"suspended by {request.user.get_username()} in the admin")
        skipped = queryset.count() - len(nodes)
        self.message_user(request, f"Suspended {len(nodes)} node(s); their active offers are "
                                   f"paused." + (f" {skipped} already suspended." if skipped
                                                 else ""), messages.SUCCESS)

    @admin.action(description="Lift the suspension of selected nodes", permissions=["change"])
    def unsuspend_nodes(self, request, queryset: QuerySet[Node]):
        nodes = list(queryset.filter(status=Node.Status.SUSPENDED))
        for node in nodes:
            node_unsuspend(node=node, actor=request.user)
        self.message_user(request, f"Lifted the suspension of {len(nodes)} node(s); they come "
                                   "back online when their agent connects. Their offers stay "
                                   "paused until resumed.", messages.SUCCESS)

    @admin.action(description="Verify claimed compliance tags", permissions=["change"])
    def verify_claimed_compliance(self, request, queryset: QuerySet[Node]):
        verified, failed = 0, []
        for node in queryset.exclude(compliance_claimed=F("compliance_verified")):
            pending = [t for t in node.claimed_tags if t not in node.verified_tags]
            try:
                node_verify_compliance(node=node, tags=pending, actor=request.user)
            except MarketError as exc:
                failed.append(f"{node.name}: {exc.message}")
            else:
                verified += 1
        self.message_user(request, f"Verified the claimed compliance tags of {verified} "
                                   "node(s).", messages.SUCCESS)
        if failed:
            self.message_user(request, "Not verified: " + "; ".join(failed), messages.ERROR)


    @admin.action(description="Rotate agent tokens (the old ones stop working)",
                  permissions=["change"])
    def rotate_agent_tokens(self, request, queryset: QuerySet[Node]):
        tokens = [f"{node.name}: {node_rotate_token(node=node, actor=request.user)}"
                  for node in queryset.order_by("pk")]
        self.message_user(request, "New agent tokens, shown once; give them to the provider "
                                   "now — " + "; ".join(tokens), messages.WARNING)


# --- Offers --------------------------------------------------------------------------
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
            raise _form_error(exc, self) from None
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


# --- Datasets ------------------------------------------------------------------------
@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "rows", "column_count", "size", "short_sha256",
                    "created_by", "created_at"]
    search_fields = ["name", "owner__name", "=sha256"]
    list_filter = ["owner__sector"]
    list_select_related = ["owner", "created_by"]
    ordering = ["-id"]
    # Uploads are validated by the dataset service (API and forms); here they are looked
    # at, renamed or removed.
    readonly_fields = ["owner", "created_by", "file", "size", "rows", "columns", "sha256",
                       "created_at"]
    fields = ["name", *readonly_fields]

    def has_add_permission(self, request):
        return False

    @admin.display(description="columns")
    def column_count(self, obj: Dataset) -> int:
        return len(obj.columns or [])

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj: Dataset) -> str:
        return filesizeformat(obj.size_bytes)

    @admin.display(description="SHA-256")
    def short_sha256(self, obj: Dataset) -> str:
        return obj.sha256[:12]


# --- Jobs and their timelines --------------------------------------------------------
class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "from_status", "to_status", "reason", "message", "actor"]
    readonly_fields = fields
    ordering = ["id"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("actor")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


TemplateFilter = fixed_choices_filter(
    "template", "template", lambda: [(t.name, t.title) for t in catalogue.templates().values()])


@admin.register(Job)
class JobAdmin(ViewOnlyWithActionsMixin, admin.ModelAdmin):
    list_display = ["id", "name", "owner", "template", "status", "resources", "max_price",
                    "budget_display", "deadline", "status_changed_at"]
    list_filter = ["status", TemplateFilter, "owner__sector"]
    search_fields = ["=id", "name", "owner__name", "created_by__username"]
    list_select_related = ["owner"]
    ordering = ["-id"]
    show_full_result_count = False
    inlines = [JobEventInline]
    actions = ["cancel_jobs"]
    fieldsets = [
        ("Job", {"fields": ["name", "owner", "created_by", "template", "params", "dataset_ref",
                            "dataset"]}),
        ("Resources and constraints", {"fields": ["resources", "min_gpu_memory_gb",
                                                  "gpu_models", "regions", "compliance",
                                                  "min_reliability"]}),
        ("Money and time", {"fields": ["max_price", "budget_display", "duration_hours",
                                       "deadline"]}),
        ("State (changed only by the job state machine)",
         {"fields": ["status", "status_changed_at", "created_at", "updated_at"]}),
    ]
    readonly_fields = ["resources", "max_price", "budget_display"]

    @admin.display(description="resources")
    def resources(self, obj: Job) -> str:
        unit = "CPU slots" if catalogue.CPU in (obj.gpu_models or []) else "GPUs"
        return f"{obj.nodes} × {obj.gpus_per_node} {unit}"

    @admin.display(description="max price", ordering="max_price_per_gpu_hour")
    def max_price(self, obj: Job) -> str:
        return price(obj.max_price_per_gpu_hour)

    @admin.display(description="budget", ordering="budget")
    def budget_display(self, obj: Job) -> str:
        return money(obj.budget)

    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_jobs(self, request, queryset: QuerySet[Job]):
        who = request.user.get_username()
        cancelled, refused = 0, []
        for job in queryset.order_by("pk"):
            try:
                before = job.events.count()
                job_cancel(job=job, actor=request.user, reason="cancelled_by_admin",
                           message=f"Cancelled by {who} (platform admin).")
            except MarketError as exc:
                refused.append(exc.message)
            else:
                if job.events.count() == before:  # a retried cancel is a no-op
                    refused.append(f"Job #{job.pk} was already cancelled.")
                else:
                    cancelled += 1
        if cancelled:
            self.message_user(request, f"Cancelled {cancelled} job(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not cancelled: " + " ".join(refused), messages.ERROR)


@admin.register(JobEvent)
class JobEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "job", "created_at", "from_status", "to_status", "reason", "actor"]
    list_filter = [fixed_choices_filter("to_status", "new status", Job.Status.choices)]
    search_fields = ["=job__id", "reason", "message"]
    list_select_related = ["job", "actor"]
    ordering = ["-id"]
    show_full_result_count = False


# --- Audit trail ---------------------------------------------------------------------
AUDIT_OBJECT_ADMIN = {"node": "marketplace_node", "offer": "marketplace_offer",
                      "job": "marketplace_job", "organization": "marketplace_organization"}


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "action", "object_link", "actor", "message"]
    list_filter = [fixed_choices_filter("object_type", "object type",
                                        [(t, t) for t in AUDIT_OBJECT_ADMIN])]
    search_fields = ["=object_id", "action", "message", "actor__username"]
    list_select_related = ["actor"]
    ordering = ["-id"]
    show_full_result_count = False

    @admin.display(description="object")
    def object_link(self, obj: AuditEvent):
        label = f"{obj.object_type} #{obj.object_id}"
        prefix = AUDIT_OBJECT_ADMIN.get(obj.object_type)
        if prefix is None:
            return label
        try:
            url = reverse(f"admin:{prefix}_change", args=[obj.object_id])
        except NoReverseMatch:
            return label
        return format_html('<a href="{}">{}</a>', url, label)


# --- Payments: wallets, escrows, settlements and the platform's chain transactions ----
# All of it is written by the payment services and the chain indexer (the chain is the
# source of truth): read-only here, except the forced refund, which goes through its service.
def _tx_link(tx_hash: str) -> str:
    if not tx_hash:
        return EMPTY
    from .selectors.payments import tx_url

    return format_html('<a href="{}"><code>{}…</code></a>', tx_url(tx_hash), tx_hash[:18])


@admin.register(Wallet)
class WalletAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    # `encrypted_key` is never listed, shown or searchable: custodial keys stay in the database.
    list_display = ["address", "organization", "kind", "is_payout", "linked_by", "created_at"]
    list_filter = ["kind", "is_payout"]
    search_fields = ["=address", "organization__name"]
    list_select_related = ["organization", "linked_by"]
    fields = ["address", "organization", "kind", "is_payout", "linked_by", "created_at"]
    ordering = ["-id"]


@admin.register(PayoutChange)
class PayoutChangeAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Payout wallet changes asked for by providers' admins (services/wallets.py): staff see
    who asked, from which wallet to which, and when it took effect or was cancelled."""

    list_display = ["organization", "wallet", "previous", "requested_by", "requested_at", "effective_at",
                    "applied_at", "cancelled_at"]
    list_filter = [("applied_at", admin.EmptyFieldListFilter), ("cancelled_at", admin.EmptyFieldListFilter)]
    search_fields = ["organization__name", "=wallet__address"]
    list_select_related = ["organization", "wallet", "previous", "requested_by"]
    ordering = ["-id"]


class LostChainFilter(admin.SimpleListFilter):
    title = "chain"
    parameter_name = "chain"

    def lookups(self, request, model_admin):
        return [("current", "Sent on the current chain"), ("lost", "Sent on a chain that is gone")]

    def queryset(self, request, queryset):
        if self.value() == "current":
            return queryset.filter(lost_reason="")
        if self.value() == "lost":
            return queryset.exclude(lost_reason="")
        return queryset


@admin.register(ChainTransaction)
class ChainTransactionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "purpose", "status", "nonce", "short_hash", "block_number", "gas_used",
                    "error", "created_at"]
    list_filter = ["status", "purpose", LostChainFilter]
    search_fields = ["=tx_hash", "=sender"]
    fields = ["purpose", "status", "chain_id", "sender", "to", "nonce", "tx_hash", "block_number",
              "gas_used", "broadcasts", "error", "lost_reason", "lost_genesis", "created_at", "updated_at"]
    ordering = ["-id"]
    show_full_result_count = False

    @admin.display(description="hash", ordering="tx_hash")
    def short_hash(self, obj: ChainTransaction) -> str:
        return _tx_link(obj.tx_hash)


@admin.register(Escrow)
class EscrowAdmin(ViewOnlyWithActionsMixin, admin.ModelAdmin):
    list_display = ["job", "status", "amount_display", "consumer_address", "funded_at", "closed_at",
                    "lost_reason"]
    list_filter = ["status"]  # "Chain lost (staff to resolve)" lists what waits for the lost-refund action
    search_fields = ["=job__id", "=key", "=consumer_address"]
    list_select_related = ["job"]
    raw_id_fields = ["job"]
    fields = ["job", "key", "status", "lost_reason", "amount_display", "consumer_address", "deadline",
              "fund_link", "close_link", "funded_at", "closed_at"]
    readonly_fields = fields
    ordering = ["-id"]
    show_full_result_count = False
    actions = ["force_refund", "lost_refund"]

    @admin.display(description="amount", ordering="amount")
    def amount_display(self, obj: Escrow) -> str:
        return money(obj.amount)

    @admin.display(description="funding transaction")
    def fund_link(self, obj: Escrow) -> str:
        return _tx_link(obj.fund_tx)

    @admin.display(description="settlement or refund transaction")
    def close_link(self, obj: Escrow) -> str:
        return _tx_link(obj.close_tx)

    @admin.action(description="Force refund (return the deposit to the consumer on chain)",
                  permissions=["change"])
    def force_refund(self, request, queryset: QuerySet[Escrow]):
        sent, refused = [], []
        for escrow in queryset.select_related("job").order_by("pk"):
            try:
                tx_hash = escrow_force_refund(job=escrow.job, actor=request.user)
            except MarketError as exc:
                refused.append(f"job {escrow.job_id}: {exc.message}")
            else:
                sent.append(f"job {escrow.job_id} ({tx_hash})")
        if sent:
            self.message_user(request, "Refund sent for " + "; ".join(sent) + ". The job follows once "
                              "the chain confirms it.", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not refunded: " + "; ".join(refused), messages.ERROR)

    @admin.action(description="Refund a lost escrow (its chain is gone: mint the deposit to the consumer "
                              "on the development chain)", permissions=["change"])
    def lost_refund(self, request, queryset: QuerySet[Escrow]):
        sent, refused = [], []
        for escrow in queryset.select_related("job").order_by("pk"):
            try:
                tx_hash = escrow_lost_refund(job=escrow.job, actor=request.user)
            except MarketError as exc:
                refused.append(f"job {escrow.job_id}: {exc.message}")
            else:
                sent.append(f"job {escrow.job_id} ({tx_hash})")
        if sent:
            self.message_user(request, "Refunded " + "; ".join(sent) + ".", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not refunded: " + "; ".join(refused), messages.ERROR)


class PayoutInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Payout
    extra = 0
    can_delete = False
    fields = ["provider", "address", "amount_display"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("provider")

    @admin.display(description="amount (after the platform fee)")
    def amount_display(self, obj: Payout) -> str:
        return money(obj.amount)


@admin.register(Settlement)
class SettlementAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["job", "status", "charged_display", "fee_display", "refunded_display", "tx",
                    "created_at", "settled_at"]
    list_filter = ["status"]
    search_fields = ["=job__id"]
    list_select_related = ["job", "transaction"]
    fields = ["job", "status", "skipped_state", "charged_display", "fee_display", "refunded_display", "tx",
              "statement", "created_at", "settled_at"]
    readonly_fields = fields
    inlines = [PayoutInline]
    ordering = ["-id"]
    show_full_result_count = False

    @admin.display(description="charged", ordering="charged")
    def charged_display(self, obj: Settlement) -> str:
        return money(obj.charged)

    @admin.display(description="platform fee", ordering="fee")
    def fee_display(self, obj: Settlement) -> str:
        return money(obj.fee)

    @admin.display(description="back to the consumer", ordering="refunded")
    def refunded_display(self, obj: Settlement) -> str:
        return money(obj.refunded)

    @admin.display(description="transaction")
    def tx(self, obj: Settlement) -> str:
        return _tx_link(obj.transaction.tx_hash) if obj.transaction_id else EMPTY


@admin.register(ChainContract)
class ChainContractAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["name", "chain_id", "address", "block_number", "created_at"]
    list_filter = ["name"]
    ordering = ["chain_id", "name"]


@admin.register(ChainAccount)
class ChainAccountAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["address", "chain_id", "next_nonce"]
    ordering = ["chain_id", "address"]


@admin.register(ChainCursor)
class ChainCursorAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["address", "chain_id", "last_block"]
    ordering = ["chain_id", "address"]


from . import admin_trust  # noqa: E402,F401  (disputes and stakes)
