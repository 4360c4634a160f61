"""A provider's nodes and offers."""

from decimal import Decimal

from django import forms

from ..models import Node
from ..services.nodes import NodeSpec
from ..services.offers import OfferSpec, offer_problems
from .common import (
    COMPLIANCE_CHOICES,
    GPU_CHOICES,
    LocalDateTimeField,
    LocalTimeFormMixin,
    MarketErrorMixin,
    region_choices,
    tz_offset_field,
)


# --- Provider: nodes and offers -----------------------------------------------------
class NodeForm(MarketErrorMixin, forms.Form):
    name = forms.CharField(max_length=80, label="Machine name",
                           widget=forms.TextInput(attrs={"placeholder": "e.g. rack2-a100"}))
    gpu_model = forms.ChoiceField(choices=GPU_CHOICES, label="GPU model")
    gpu_count = forms.IntegerField(min_value=1, max_value=64, initial=1,
                                   label="GPUs in the machine",
                                   help_text="For a CPU machine: its training slots.")
    gpu_memory_gb = forms.IntegerField(min_value=1, max_value=1024, required=False,
                                       label="Memory per GPU (GB)",
                                       help_text="Empty: the model's standard memory.")
    cpu_cores = forms.IntegerField(min_value=1, max_value=4096, label="CPU cores")
    ram_gb = forms.IntegerField(min_value=1, max_value=65536, label="RAM (GB)")
    disk_gb = forms.IntegerField(min_value=1, max_value=10**7, label="Disk (GB)")
    bandwidth_mbps = forms.IntegerField(min_value=1, required=False, label="Bandwidth (Mbit/s)")
    region = forms.ChoiceField(choices=region_choices(blank="Choose a region", blocs=False))
    compliance = forms.MultipleChoiceField(choices=COMPLIANCE_CHOICES, required=False,
                                           widget=forms.CheckboxSelectMultiple,
                                           label="Compliance you claim",
                                           help_text="An admin verifies each claim before jobs "
                                                     "that require it can run here.")

    def to_spec(self) -> NodeSpec:
        c = self.cleaned_data
        return NodeSpec(name=c["name"], gpu_model=c["gpu_model"], gpu_count=c["gpu_count"],
                        gpu_memory_gb=c.get("gpu_memory_gb"), cpu_cores=c["cpu_cores"],
                        ram_gb=c["ram_gb"], disk_gb=c["disk_gb"], region=c["region"],
                        compliance=tuple(c.get("compliance") or ()),
                        bandwidth_mbps=c.get("bandwidth_mbps"))


class OfferForm(LocalTimeFormMixin, MarketErrorMixin, forms.Form):
    local_time_fields = ("available_from", "available_until")

    node = forms.ModelChoiceField(queryset=Node.objects.none(), label="Machine")
    gpus_offered = forms.IntegerField(label="GPUs offered", min_value=None)
    price_per_gpu_hour = forms.DecimalField(decimal_places=6, max_digits=20,
                                            label="Price (tUSD / GPU-h)")
    available_from = LocalDateTimeField(required=False, label="Available from (local time)",
                                        help_text="Empty: now.")
    available_until = LocalDateTimeField(required=False, label="Available until (local time)",
                                         help_text="Empty: until you pause it.")
    min_duration_hours = forms.DecimalField(decimal_places=2, max_digits=8,
                                            initial=Decimal("0.25"),
                                            label="Shortest job (hours)")
    max_duration_hours = forms.DecimalField(decimal_places=2, max_digits=8, required=False,
                                            label="Longest job (hours)",
                                            help_text="Empty: no limit.")
    accepts_custom_code = forms.BooleanField(
        required=False, label="Run consumers' own code (code bundles)",
        help_text="Jobs with a consumer's code bundle run on this offer inside the agent's "
                  "sandbox, in the runtime the agent reports; unticked, only the built-in "
                  "templates run here.")
    tz_offset = tz_offset_field()

    def __init__(self, *args, nodes=None, editing: bool = False, offer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.offer = offer
        if nodes is not None:
            self.fields["node"].queryset = nodes
        self.fields["node"].label_from_instance = (
            lambda n: f"{n.name} — {n.gpu_count} × {n.gpu_model}, {n.region}")
        if editing:
            del self.fields["node"]

    def clean(self):
        """The service's checks of the terms too (capacity, window, durations): every error at
        once, next to its field, instead of one per submission. The service checks again."""
        cleaned = super().clean()
        node = self.offer.node if self.offer is not None else cleaned.get("node")
        # A value the form could not parse is None here (offer_problems allows for it).
        spec = OfferSpec(gpus_offered=cleaned.get("gpus_offered"),  # type: ignore[arg-type]
                         price_per_gpu_hour=cleaned.get("price_per_gpu_hour"),  # type: ignore[arg-type]
                         available_from=cleaned.get("available_from")
                         or (self.offer.available_from if self.offer is not None else None),
                         available_until=cleaned.get("available_until"),
                         min_duration_hours=cleaned.get("min_duration_hours"),  # type: ignore[arg-type]
                         max_duration_hours=cleaned.get("max_duration_hours"))
        for field, message in offer_problems(spec, node, exclude_offer=self.offer):
            name = field if field in self.fields else None
            if name is None or name not in self.errors:  # a value it could not parse keeps its own error
                self.add_error(name, message)
        return cleaned

    def to_spec(self) -> OfferSpec:
        c = self.cleaned_data
        return OfferSpec(gpus_offered=c["gpus_offered"], price_per_gpu_hour=c["price_per_gpu_hour"],
                         available_from=c.get("available_from"),
                         available_until=c.get("available_until"),
                         min_duration_hours=c["min_duration_hours"],
                         max_duration_hours=c.get("max_duration_hours"),
                         accepts_custom_code=bool(c.get("accepts_custom_code")))
