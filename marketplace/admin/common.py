"""What the admin's modules share: display helpers, catalogue-backed list filters, the
read-only mixins and the service-validated model form."""

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import F
from django.forms.models import construct_instance
from django.utils.html import format_html

from .. import catalogue
from ..errors import MarketError
from ..money import tusd as money  # "1.85 tUSD": the one display rule for amounts
from ..selectors.payments import tx_url

EMPTY = "—"


def act_on_each(model_admin: admin.ModelAdmin, request, objects: Iterable[Any], act: Callable[[Any], str], *,
                done: str, refused: str, label: Callable[[Any], str] | None = None,
                done_sep: str = ", ", refused_sep: str = "; ") -> None:
    """An admin action that calls a service once per selected object: one success message
    with what `act` did (each its returned text, put into the `done` template), one error
    message with what the services refused (a MarketError), each named by `label`."""
    ok, no = [], []
    for obj in objects:
        try:
            ok.append(act(obj))
        except MarketError as exc:
            no.append(f"{label(obj)}: {exc.message}" if label else exc.message)
    if ok:
        model_admin.message_user(request, done.format(done_sep.join(ok)), messages.SUCCESS)
    if no:
        model_admin.message_user(request, refused + refused_sep.join(no), messages.ERROR)


# --- Display helpers -----------------------------------------------------------------
def price(value: Decimal | None) -> str:
    return money(value, "tUSD / GPU-h")


def tags(mask: int) -> str:
    return ", ".join(catalogue.compliance_tags(mask)) or EMPTY


def reliability(value: Decimal | None) -> str:
    # NULL means too little history; the product shows such nodes as "new".
    return "new" if value is None else f"{value * 100:.1f} %"


def form_error(exc: MarketError, form: forms.Form) -> ValidationError:
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


def tx_link(tx_hash: str) -> str:
    if not tx_hash:
        return EMPTY
    return format_html('<a href="{}"><code>{}…</code></a>', tx_url(tx_hash), tx_hash[:18])
