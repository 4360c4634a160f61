"""Admin for providers' nodes: created, changed, suspended, verified (on evidence) and
given new agent tokens through the node services."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import F, QuerySet
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from .. import catalogue
from ..errors import MarketError
from ..models import ComplianceEvidence, Node, Organization
from ..services.nodes import (
    NodeSpec,
    node_create,
    node_rotate_token,
    node_spec_validate,
    node_suspend,
    node_unsuspend,
    node_update,
    node_verify_compliance,
)
from .common import (
    AwaitingVerificationFilter,
    ReadOnlyAdminMixin,
    ServiceValidatedForm,
    form_error,
    reliability,
    tags,
)


class ComplianceEvidenceForm(forms.Form):
    document = forms.FileField(label="Evidence document",
                               help_text="The audit report or certificate you checked (PDF, image or text; "
                                         "at most 10 MB).")
    note = forms.CharField(label="What you checked", widget=forms.Textarea(attrs={"rows": 4}), min_length=10,
                           max_length=2000, help_text="Who issued it, what it covers, until when.")


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
            raise form_error(exc, self) from None
        return data


class ComplianceEvidenceInline(ReadOnlyAdminMixin, admin.TabularInline):
    """Who verified which tags on what evidence (services/nodes.py node_verify_compliance)."""

    model = ComplianceEvidence
    fields = ["created_at", "tags", "verified_by", "document_link", "note"]
    readonly_fields = fields
    extra = 0
    ordering = ["-created_at"]

    @admin.display(description="document")
    def document_link(self, obj: ComplianceEvidence) -> str:
        url = reverse("admin:marketplace_node_evidence", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.document_name or "document")


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

    def get_inlines(self, request, obj=None):
        return [ComplianceEvidenceInline] if obj is not None else []

    def get_urls(self):
        return [path("evidence/<int:pk>/document/", self.admin_site.admin_view(self.evidence_document),
                     name="marketplace_node_evidence"), *super().get_urls()]

    def evidence_document(self, request, pk: int):
        """Staff download the evidence behind a verification (never served from /media/)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        evidence = get_object_or_404(ComplianceEvidence, pk=pk)
        return FileResponse(evidence.document.open("rb"), as_attachment=True,
                            filename=evidence.document_name or "evidence")

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

    @admin.action(description="Verify claimed compliance tags (asks for the evidence)",
                  permissions=["change"])
    def verify_claimed_compliance(self, request, queryset: QuerySet[Node]):
        """An intermediate page asks for the evidence (a document and a note) before any tag
        is verified; the service keeps both with who verified what."""
        nodes = list(queryset.exclude(compliance_claimed=F("compliance_verified")).select_related("provider"))
        if not nodes:
            self.message_user(request, "No selected node has unverified claimed tags.", messages.WARNING)
            return None
        form = ComplianceEvidenceForm(request.POST if "apply" in request.POST else None,
                                      request.FILES if "apply" in request.POST else None)
        if form.is_valid():
            verified, failed = [], []
            for node in nodes:
                pending = [t for t in node.claimed_tags if t not in node.verified_tags]
                document = form.cleaned_data["document"]
                document.seek(0)
                try:
                    node_verify_compliance(node=node, tags=pending, actor=request.user, document=document,
                                           note=form.cleaned_data["note"])
                except MarketError as exc:
                    failed.append(f"{node.name}: {exc.message}")
                else:
                    verified.append(f"{node.name} ({', '.join(pending)})")
            if verified:
                self.message_user(request, "Verified on the evidence given: " + "; ".join(verified) + ".",
                                  messages.SUCCESS)
            if failed:
                self.message_user(request, "Not verified: " + "; ".join(failed), messages.ERROR)
            return None
        return TemplateResponse(request, "admin/marketplace/node/verify_compliance.html", {
            **self.admin_site.each_context(request), "title": "Verify claimed compliance tags",
            "opts": self.model._meta, "form": form,
            "nodes": [(n, [t for t in n.claimed_tags if t not in n.verified_tags]) for n in nodes],
            "action": "verify_claimed_compliance", "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        })

    @admin.action(description="Rotate agent tokens (the old ones stop working)",
                  permissions=["change"])
    def rotate_agent_tokens(self, request, queryset: QuerySet[Node]):
        tokens = [f"{node.name}: {node_rotate_token(node=node, actor=request.user)}"
                  for node in queryset.order_by("pk")]
        self.message_user(request, "New agent tokens, shown once; give them to the provider "
                                   "now — " + "; ".join(tokens), messages.WARNING)
