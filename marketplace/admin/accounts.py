"""Admin for organizations and their memberships. Every change goes through a service that
writes the audit trail (services/organizations.py, services/suspension.py): creating,
renaming, verifying, suspending, and adding, re-roling or removing members. Organizations
are never deleted here: they carry history (jobs, nodes, payments); suspend instead."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from ..errors import MarketError
from ..models import Membership, Organization
from ..services.organizations import (
    membership_add,
    membership_remove,
    membership_set_role,
    organization_add,
    organization_changes_validate,
    organization_set_verified,
    organization_update,
)
from ..services.suspension import organization_suspend, organization_unsuspend
from .common import ServiceValidatedForm, form_error


class OrganizationAddForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ["name", "kind", "sector", "is_verified", "is_suspended"]

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if Organization.objects.filter(name__iexact=name).exists():
            raise ValidationError("An organization with this name exists.")
        return name


class OrganizationChangeForm(ServiceValidatedForm):
    class Meta:
        model = Organization
        fields = ["name", "kind", "sector", "is_verified"]

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            organization_changes_validate(organization=self.instance, name=data.get("name") or "",
                                          kind=data.get("kind") or "", sector=data.get("sector") or "")
        except MarketError as exc:
            raise form_error(exc, self) from None
        return data


def memberships_save(formset, organization: Organization, actor) -> None:
    """The membership inline's rows, saved through the membership services."""
    formset.save(commit=False)  # sorts the rows into new, changed and deleted; writes nothing
    for membership in formset.deleted_objects:
        membership_remove(membership=membership, actor=actor)
    for membership, changed in formset.changed_objects:
        if "user" in changed:  # another person in this row: one leaves, the other joins
            membership_remove(membership=membership, actor=actor)
            membership_add(organization=organization, user=membership.user, role=membership.role,
                           actor=actor)
        else:
            membership_set_role(membership=membership, role=membership.role, actor=actor)
    for membership in formset.new_objects:
        membership_add(organization=organization, user=membership.user, role=membership.role,
                       actor=actor)


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
        kwargs["form"] = OrganizationAddForm if obj is None else OrganizationChangeForm
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
            current = Organization.objects.get(pk=obj.pk)
            organization_update(organization=current, actor=request.user, name=obj.name, kind=obj.kind,
                                sector=obj.sector)
            organization_set_verified(organization=current, verified=obj.is_verified, actor=request.user)
        else:
            # The service picks a unique slug and a join code.
            obj.pk = organization_add(name=obj.name, kind=obj.kind, sector=obj.sector, actor=request.user,
                                      verified=obj.is_verified, suspended=obj.is_suspended).pk
        obj.refresh_from_db()

    def save_formset(self, request, form, formset, change):
        if formset.model is Membership:
            memberships_save(formset, form.instance, request.user)
        else:
            super().save_formset(request, form, formset, change)

    def has_delete_permission(self, request, obj=None):
        return False

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

    def get_readonly_fields(self, request, obj=None):
        # A person moves to another organization by leaving one and joining the other.
        return [] if obj is None else ["user", "organization", "created_at"]

    def save_model(self, request, obj, form, change):
        if change:
            membership_set_role(membership=obj, role=obj.role, actor=request.user)
        else:
            obj.pk = membership_add(organization=obj.organization, user=obj.user, role=obj.role,
                                    actor=request.user).pk
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        membership_remove(membership=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for membership in queryset.order_by("pk"):
            membership_remove(membership=membership, actor=request.user)
