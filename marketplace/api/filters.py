"""Query-string filters. Unknown values are a 400 naming the parameter, never ignored:
a typo in `region` must not silently widen a search."""

from decimal import Decimal

import django_filters as df
from django import forms
from django.db.models import F, QuerySet

from .. import catalogue
from ..models import Job, Offer
from ..selectors.offer_search import free_at_least, in_regions, verified_for

MAX_INT = 2**31 - 1


class StrictBooleanField(forms.Field):
    """true/false/1/0/yes/no; anything else is an error (forms' NullBooleanField would
    quietly read it as 'no filter')."""

    TRUE = {"true", "1", "yes", "on"}
    FALSE = {"false", "0", "no", "off"}
    default_error_messages = {"invalid": "Use true or false."}

    def to_python(self, value):
        if value is None:
            return None
        text = str(value).strip().lower()
        if text in self.TRUE:
            return True
        if text in self.FALSE:
            return False
        raise forms.ValidationError(self.error_messages["invalid"], code="invalid")


class StrictBooleanFilter(df.BooleanFilter):
    field_class = StrictBooleanField


class _NoEmpty:
    """`min_gpus=` (named, empty) is an error, as the schema says, not "no filter"; a
    filter left out is still no filter."""

    def to_python(self, value):
        if value == "":
            raise forms.ValidationError("Give a value or leave the parameter out.", code="blank")
        return super().to_python(value)


class StrictIntegerField(_NoEmpty, forms.IntegerField):
    pass


class StrictDecimalField(_NoEmpty, forms.DecimalField):
    pass


class IntegerFilter(df.NumberFilter):
    field_class = StrictIntegerField


class DecimalFilter(df.NumberFilter):
    field_class = StrictDecimalField


def _choices_message(kind: str, known: list[str]) -> dict[str, str]:
    return {"invalid_choice": f"Unknown {kind} '%(value)s'. Known: {', '.join(known)}."}


class OfferOrdering(df.OrderingFilter):
    """Price, GPU memory or reliability, either way; ties broken by id so that pages are
    stable. Nodes without a reliability record ("new") sort last both ways."""

    def filter(self, qs: QuerySet, value):
        if not value:
            return qs
        order = []
        for param in value:
            descending = param.startswith("-")
            name = self.param_map[param.lstrip("-")]
            expr = F(name)
            order.append(expr.desc(nulls_last=True) if descending else expr.asc(nulls_last=True))
        return qs.order_by(*order, "id")


class OfferFilter(df.FilterSet):
    _form_class = None

    def get_form_class(self):
        # The filters never change per request: build their form class once, not per call.
        cls = type(self)
        if cls._form_class is None:
            cls._form_class = super().get_form_class()
        return cls._form_class

    # distinct=False: the search is one table, nothing can duplicate a row, and DISTINCT
    # doubled the COUNT's cost on 100k offers (docs/BENCHMARKS.md).
    gpu_model = df.MultipleChoiceFilter(
        distinct=False, choices=[(m, m) for m in catalogue.GPU_MODELS],
        error_messages=_choices_message("GPU model", list(catalogue.GPU_MODELS)),
        help_text="GPU model; repeat for several (any of them).")
    min_gpus = IntegerFilter(method="filter_min_gpus", min_value=1, max_value=MAX_INT,
                             help_text="At least this many free GPUs (CPU slots for cpu).")
    min_gpu_memory_gb = IntegerFilter(field_name="gpu_memory_gb", lookup_expr="gte",
                                      min_value=0, max_value=MAX_INT,
                                      help_text="Memory per GPU, GB, at least.")
    region = df.MultipleChoiceFilter(
        distinct=False, choices=[(r, r) for r in [*catalogue.REGIONS, *catalogue.REGION_BLOCS]],
        method="filter_region",
        error_messages=_choices_message("region", [*catalogue.REGIONS, *catalogue.REGION_BLOCS]),
        help_text="A region code (EU-DE) or a bloc (EU); repeat for several (any of them).")
    compliance = df.MultipleChoiceFilter(
        distinct=False, choices=[(t, t) for t in catalogue.COMPLIANCE_TAGS], method="filter_compliance",
        error_messages=_choices_message("compliance tag", list(catalogue.COMPLIANCE_TAGS)),
        help_text="Verified compliance tag; repeat to require all of them.")
    max_price = DecimalFilter(field_name="price_per_gpu_hour", lookup_expr="lte",
                                min_value=Decimal("0.000001"), max_digits=20, decimal_places=6,
                                help_text="Price per GPU-hour in tUSD, at most.")
    min_reliability = DecimalFilter(field_name="reliability", lookup_expr="gte",
                                      min_value=0, max_value=1, max_digits=5, decimal_places=4,
                                      help_text="Share 0–1; excludes new nodes.")
    online = StrictBooleanFilter(field_name="node_online",
                                 help_text="Only offers whose node's agent is connected.")
    accepts_custom_code = StrictBooleanFilter(
        field_name="accepts_custom_code",
        help_text="Only offers that run consumers' own code (code bundles), or only those that do not.")
    ordering = OfferOrdering(
        fields=(("price_per_gpu_hour", "price_per_gpu_hour"), ("gpu_memory_gb", "gpu_memory_gb"),
                ("reliability", "reliability")),
        help_text="price_per_gpu_hour, gpu_memory_gb or reliability; prefix - to reverse.")

    class Meta:
        model = Offer
        fields: list[str] = []

    def filter_min_gpus(self, qs: QuerySet, name: str, value: int) -> QuerySet:
        return qs.filter(free_at_least(value))

    def filter_region(self, qs: QuerySet, name: str, value: list[str]) -> QuerySet:
        return qs.filter(in_regions(value)) if value else qs

    def filter_compliance(self, qs: QuerySet, name: str, value: list[str]) -> QuerySet:
        return qs.filter(verified_for(value)) if value else qs


class JobFilter(df.FilterSet):
    status = df.MultipleChoiceFilter(choices=Job.Status.choices,
                                     help_text="Job status; repeat for several.")

    class Meta:
        model = Job
        fields: list[str] = []
