"""The offers browser's filters."""

from decimal import Decimal

from django import forms
from django.utils.html import format_html

from ..selectors.offer_search import DEFAULT_ORDERING, OfferQuery
from .common import COMPLIANCE_CHOICES, GPU_CHOICES, MarketErrorMixin, region_choices


# --- Offer search ----------------------------------------------------------------------
class OnByDefaultCheckbox(forms.CheckboxInput):
    """A checkbox that is ticked when its form was never submitted (a bare /offers/ link):
    a hidden `false` goes before the box, so a submitted form says `false` (unticked) or
    `false&…=on` (ticked, the last value wins), and only an absent key means the default."""

    def render(self, name, value, attrs=None, renderer=None):
        hidden = format_html('<input type="hidden" name="{}" value="false">', name)
        return hidden + super().render(name, value, attrs, renderer)

    def value_from_datadict(self, data, files, name):
        if name not in data:
            return True
        return super().value_from_datadict(data, files, name)

    def value_omitted_from_data(self, data, files, name):
        return False


def typed_text(mode: str) -> forms.TextInput:
    # Text, not type=number: the browser would blank a value it cannot parse ("1e", "abc")
    # and send nothing, so the old results would stay on screen with no error.
    return forms.TextInput(attrs={"inputmode": mode, "autocomplete": "off"})


class OfferFilterForm(MarketErrorMixin, forms.Form):
    ORDERING_CHOICES = [
        ("price_per_gpu_hour", "Price, lowest first"),
        ("-price_per_gpu_hour", "Price, highest first"),
        ("-gpu_memory_gb", "GPU memory, largest first"),
        ("-reliability", "Reliability, highest first"),
    ]
    RELIABILITY_CHOICES = [("", "Any, including new nodes"), ("0.9", "≥ 90 %"),
                           ("0.95", "≥ 95 %"), ("0.99", "≥ 99 %")]

    # One parameter, repeated (`gpu_model=A&gpu_model=B`), so that old one-model links work.
    gpu_model = forms.MultipleChoiceField(required=False, label="GPU models", choices=GPU_CHOICES,
                                          widget=forms.CheckboxSelectMultiple,
                                          help_text="None ticked: any model.")
    min_gpus = forms.IntegerField(required=False, min_value=1, max_value=64,
                                  label="Free GPUs, at least", widget=typed_text("numeric"))
    min_gpu_memory_gb = forms.IntegerField(required=False, min_value=0, max_value=1024,
                                           label="Memory per GPU, at least (GB)",
                                           widget=typed_text("numeric"))
    region = forms.CharField(required=False, widget=forms.Select(
        choices=region_choices(blank="Anywhere")))
    compliance = forms.MultipleChoiceField(required=False, choices=COMPLIANCE_CHOICES,
                                           widget=forms.CheckboxSelectMultiple,
                                           label="Verified compliance")
    max_price = forms.DecimalField(required=False, min_value=Decimal("0.000001"),
                                   decimal_places=6, max_digits=20,
                                   label="Price, at most (tUSD / GPU-h)",
                                   widget=typed_text("decimal"))
    min_reliability = forms.DecimalField(required=False, widget=forms.Select(
        choices=RELIABILITY_CHOICES), label="Reliability")
    online = forms.BooleanField(required=False, label="Online now only",
                                widget=OnByDefaultCheckbox)
    accepts_custom_code = forms.BooleanField(required=False,
                                             label="Runs your own code (code bundles)")
    ordering = forms.ChoiceField(required=False, choices=ORDERING_CHOICES, label="Sort by")

    def to_query(self) -> OfferQuery:
        c = self.cleaned_data
        return OfferQuery(
            gpu_models=tuple(c.get("gpu_model") or ()), min_gpus=c.get("min_gpus"),
            min_gpu_memory_gb=c.get("min_gpu_memory_gb"), region=c.get("region") or "",
            compliance=tuple(c.get("compliance") or ()), max_price=c.get("max_price"),
            min_reliability=c.get("min_reliability"), online=bool(c.get("online")),
            accepts_custom_code=bool(c.get("accepts_custom_code")),
            ordering=c.get("ordering") or DEFAULT_ORDERING,
        )

    def error_list(self) -> list[tuple[str, str]]:
        """(field label, message) for every error, for the results pane that htmx swaps."""
        return [(str(self[n].label) if n in self.fields else "", e)
                for n, errs in self.errors.items() for e in errs]
