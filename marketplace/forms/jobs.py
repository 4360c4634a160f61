"""The job form and the live quote (the same fields)."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django import forms

from .. import catalogue
from ..errors import MarketError
from ..models import CodeBundle, Dataset, Organization
from ..services.job_spec import JobSpec
from .common import (
    COMPLIANCE_CHOICES,
    GPU_CHOICES,
    LocalDateTimeField,
    LocalTimeFormMixin,
    MarketErrorMixin,
    tz_offset_field,
    utc_to_input,
)


# --- Jobs ----------------------------------------------------------------------------
class JobForm(LocalTimeFormMixin, MarketErrorMixin, forms.Form):
    local_time_fields = ("deadline",)

    name = forms.CharField(max_length=120, label="Job name",
                           widget=forms.TextInput(attrs={"placeholder": "e.g. Sepsis risk v3"}))
    template = forms.ChoiceField(choices=[], widget=forms.RadioSelect, label="Training template")
    bundle = forms.ChoiceField(
        choices=[], required=False, label="Or your own code (a code bundle)",
        help_text="Chosen, it replaces the template: its params schema applies, its data is one "
                  "of your uploads (CSV or zip) or none, and it runs only on offers that accept "
                  "custom code in its runtime.")
    dataset = forms.CharField(max_length=80, widget=forms.Select)
    weights = forms.ChoiceField(
        choices=[], required=False, label="Start from your weights (fine-tune)",
        help_text="A .pt state_dict you uploaded: every machine loads it into the model before "
                  "the first step; it must fit the model exactly (names and shapes).")
    params = forms.CharField(label="Hyper-parameters (JSON)", required=False,
                             widget=forms.Textarea(attrs={"rows": 13, "spellcheck": "false",
                                                          "class": "mono"}))
    nodes = forms.IntegerField(min_value=1, initial=1, label="Machines (nodes)")
    gpus_per_node = forms.IntegerField(min_value=1, initial=1, label="GPUs per machine",
                                       help_text="For CPU slots: training processes per machine.")
    sync_mode = forms.ChoiceField(
        choices=[("ddp", "DDP: every gradient, every step"),
                 ("diloco", "DiLoCo: one pseudo-gradient every H steps (2 or more machines)")],
        initial="ddp", required=False, widget=forms.RadioSelect,
        label="Synchronisation between machines")
    inner_steps = forms.IntegerField(required=False, initial=50, label="Inner steps (H)",
                                     help_text="DiLoCo: local steps between synchronisations.")
    outer_lr = forms.FloatField(required=False, initial=0.7, label="Outer learning rate")
    outer_momentum = forms.FloatField(required=False, initial=0.9, label="Outer Nesterov momentum")
    precision = forms.ChoiceField(required=False, initial="fp32", label="Wire precision",
                                  choices=[("fp32", "fp32 (exact)"), ("fp16", "fp16"),
                                           ("int8", "int8, per-tensor scale")])
    min_gpu_memory_gb = forms.IntegerField(min_value=0, required=False, initial=0,
                                           label="Memory per GPU, at least",
                                           help_text="0: any amount.")
    gpu_models = forms.MultipleChoiceField(choices=GPU_CHOICES, required=False,
                                           widget=forms.CheckboxSelectMultiple,
                                           label="GPU models",
                                           help_text="None ticked: any GPU (but not CPU).")
    regions = forms.CharField(required=False, max_length=200, label="Regions",
                              help_text="Codes or blocs, comma-separated: EU, or EU-DE, EU-FR. "
                                        "Empty: anywhere.",
                              widget=forms.TextInput(attrs={"placeholder": "EU",
                                                            "list": "region-codes"}))
    compliance = forms.MultipleChoiceField(choices=COMPLIANCE_CHOICES, required=False,
                                           widget=forms.CheckboxSelectMultiple,
                                           label="Required compliance (verified)")
    min_reliability = forms.DecimalField(required=False, min_value=0, max_value=100,
                                         decimal_places=1, label="Reliability, at least (%)",
                                         help_text="Empty accepts new nodes without history.")
    max_price_per_gpu_hour = forms.DecimalField(decimal_places=6, max_digits=20,
                                                label="Maximum price (tUSD / GPU-h)",
                                                initial=Decimal("3.00"))
    budget = forms.DecimalField(decimal_places=6, max_digits=20, label="Budget (tUSD)",
                                initial=Decimal("100.00"))
    duration_hours = forms.DecimalField(decimal_places=2, max_digits=8, initial=Decimal("2"),
                                        label="Expected duration (hours)")
    deadline = LocalDateTimeField(label="Deadline (your local time)")
    tz_offset = tz_offset_field()

    def __init__(self, *args, organization: Organization | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        tpls = catalogue.templates()
        self.fields["template"].choices = [(t.name, t.title) for t in tpls.values()]
        chosen = (self.data.get("template") if self.is_bound else None) \
            or self.initial.get("template") or next(iter(tpls))
        self.template_obj = tpls.get(chosen) or next(iter(tpls.values()))
        t = self.template_obj
        choices: list = [(f"sample:{s['name']}", f"{s['title']} — {s['rows']:,} rows (bundled sample)")
                         for s in t.samples]
        bundles: list = [("", "None: train the template above")]
        if organization is not None:
            uploads = Dataset.objects.filter(owner=organization).exclude(kind="weights").only(
                "id", "name", "rows", "kind", "entries")[:50]
            if uploads:
                choices.append(("Your uploads", [
                    (str(d.pk), f"{d.name} — {d.entries:,} files (zip)" if d.kind == "zip"
                     else f"{d.name} — {d.rows:,} rows") for d in uploads]))
            bundles += [(str(b.pk), f"{b.name} — {b.entry}, {b.runtime}")
                        for b in CodeBundle.objects.filter(owner=organization)[:50]]
        choices.append(("none", "No dataset (a code bundle that makes its own data)"))
        self.fields["dataset"].widget.choices = choices
        self.fields["bundle"].choices = bundles
        starts: list = [("", "None: train from the model's own initialisation")]
        if organization is not None:
            starts += [(str(w.pk), f"{w.name} — {w.entries:,} tensors, SHA-256 {w.sha256[:12]}…")
                       for w in Dataset.objects.filter(owner=organization, kind="weights")[:50]]
        self.fields["weights"].choices = starts
        if not self.is_bound:
            self.initial.setdefault("template", t.name)
            self.initial.setdefault("params", json.dumps(t.defaults(), indent=2))
            deadline = (datetime.now(UTC) + timedelta(days=3)).replace(minute=0, second=0,
                                                                        microsecond=0)
            self.initial.setdefault("deadline", utc_to_input(deadline))
            # static/js/app.js rewrites this UTC default into the browser's local time.
            self.fields["deadline"].widget.attrs["data-utc-default"] = deadline.isoformat()

    def clean_params(self):
        raw = (self.cleaned_data.get("params") or "").strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"This is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).",
            ) from None
        if not isinstance(value, dict):
            raise forms.ValidationError('Hyper-parameters must be a JSON object, e.g. {"epochs": 5}.')
        return value

    def clean_regions(self):
        raw = self.cleaned_data.get("regions") or ""
        return [t for t in raw.replace(";", ",").replace(" ", ",").split(",") if t.strip()]

    # The service names the sync setting at fault; show it on its own field.
    SYNC_ERROR_FIELDS = {"sync": "sync_mode", "sync.mode": "sync_mode", "sync.inner_steps": "inner_steps",
                         "sync.outer_lr": "outer_lr", "sync.outer_momentum": "outer_momentum",
                         "sync.precision": "precision"}

    def add_market_error(self, exc: MarketError) -> None:
        target = self.SYNC_ERROR_FIELDS.get(exc.field or "")
        if target is None:
            super().add_market_error(exc)
        else:
            self.add_error(target, exc.message)

    def sync_settings(self) -> dict:
        c = self.cleaned_data
        if c.get("sync_mode") != "diloco":
            return {"mode": "ddp"}
        given = {k: c.get(k) for k in ("inner_steps", "outer_lr", "outer_momentum", "precision")}
        return {"mode": "diloco", **{k: v for k, v in given.items() if v not in (None, "")}}

    def to_spec(self, *, name_fallback: str = "") -> JobSpec:
        c = self.cleaned_data
        reliability = c.get("min_reliability")
        bundle = c.get("bundle") or ""
        return JobSpec(
            name=c.get("name") or name_fallback, template="" if bundle else c["template"],
            bundle=bundle, dataset=c["dataset"], weights=c.get("weights") or "",
            params=c.get("params") or {}, nodes=c["nodes"], gpus_per_node=c["gpus_per_node"],
            sync=self.sync_settings(),
            min_gpu_memory_gb=c.get("min_gpu_memory_gb") or 0,
            gpu_models=tuple(c.get("gpu_models") or ()), regions=tuple(c.get("regions") or ()),
            compliance=tuple(c.get("compliance") or ()),
            min_reliability=(reliability / 100) if reliability else None,
            max_price_per_gpu_hour=c["max_price_per_gpu_hour"], budget=c["budget"],
            duration_hours=c["duration_hours"], deadline=c["deadline"],
        )


class QuoteForm(JobForm):
    """The job form as the live quote reads it: a name is not needed for a quote."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["name"].required = False
