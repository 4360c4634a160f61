"""The audit trail, read-only: the services write it."""

from django.contrib import admin
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from ..models import AuditEvent
from .common import ReadOnlyAdminMixin, fixed_choices_filter

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
