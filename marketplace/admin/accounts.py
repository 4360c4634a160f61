"""Admin for organizations and their memberships."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from ..models import Membership, Organization
from ..services.accounts import organization_create
from ..services.suspension import organization_suspend, organization_unsuspend


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
