"""HTML forms. They parse and shape input; the services validate the domain rules and
raise MarketError, which `add_market_error` turns into a field error."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django import forms
from django.utils.html import format_html

from . import catalogue
from .errors import MarketError
from .models import CodeBundle, Dataset, Node, Organization
from .selectors.offer_search import DEFAULT_ORDERING, OfferQuery
from .services.job_spec import JobSpec
from .services.nodes import NodeSpec
from .services.offers import OfferSpec
from .templatetags.market_ui import BLOC_NAMES

LOCAL_DT_FORMAT = "%Y-%m-%dT%H:%M"


def region_choices(*, blank: str | None = None, blocs: bool = True) -> list:
    choices: list = [("", blank)] if blank is not None else []
    if blocs:
        choices.append(("Blocs", [(b, f"{b} — {BLOC_NAMES.get(b, b)}")
                                  for b in catalogue.REGION_BLOCS]))
    choices.append(("Countries and states",
                    [(code, f"{code} — {name}") for code, name in sorted(catalogue.REGIONS.items())]))
    return choices


GPU_CHOICES = [(m, f"{m} ({mem} GB)") for m, mem in catalogue.GPU_MODELS.items()
               if m != catalogue.CPU] + [(catalogue.CPU, "CPU slots (no GPU)")]
COMPLIANCE_CHOICES = list(catalogue.COMPLIANCE_TAGS.items())


class MarketErrorMixin:
    """Attach a service's MarketError to the field it names, else to the whole form."""

    def add_market_error(self, exc: MarketError) -> None:
        name = (exc.field or "").split(".")[0]
        self.add_error(name if name in self.fields else None, exc.message)  # type: ignore[attr-defined]


class LocalDateTimeInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self, attrs=None):
        super().__init__(attrs=attrs, format=LOCAL_DT_FORMAT)


class LocalDateTimeField(forms.DateTimeField):
    """A datetime-local value: wall-clock time in the browser's zone. The form turns it
    into UTC with the hidden `tz_offset` (minutes, as JS getTimezoneOffset gives)."""

    widget = LocalDateTimeInput

    def __init__(self, **kwargs):
        kwargs.setdefault("input_formats", [LOCAL_DT_FORMAT, "%Y-%m-%dT%H:%M:%S"])
        super().__init__(**kwargs)


class LocalTimeFormMixin:
    local_time_fields: tuple[str, ...] = ()

    def clean(self):
        cleaned = super().clean()  # type: ignore[misc]
        offset = cleaned.get("tz_offset") or 0
        for name in self.local_time_fields:
            value = cleaned.get(name)
            if value is not None:
                wall = value.replace(tzinfo=None)
                cleaned[name] = (wall + timedelta(minutes=offset)).replace(tzinfo=UTC)
        return cleaned


def utc_to_input(value: datetime) -> str:
    return value.astimezone(UTC).strftime(LOCAL_DT_FORMAT)


def tz_offset_field() -> forms.IntegerField:
    return forms.IntegerField(required=False, min_value=-14 * 60, max_value=14 * 60,
                              widget=forms.HiddenInput(attrs={"data-tz-offset": ""}))


# --- Accounts ------------------------------------------------------------------------
class SignupForm(MarketErrorMixin, forms.Form):
    MODE_CHOICES = [("create", "Create a new organization"),
                    ("join", "Join my team's organization with a join code")]

    username = forms.CharField(max_length=150)
    email = forms.EmailField(required=False)
    password = forms.CharField(widget=forms.PasswordInput(render_value=False),
                               help_text="At least 8 characters, not only digits.")
    password_again = forms.CharField(widget=forms.PasswordInput, label="Password, again")
    mode = forms.ChoiceField(choices=MODE_CHOICES, initial="create", widget=forms.RadioSelect,
                             label="Organization")
    organization_name = forms.CharField(max_length=120, required=False)
    kind = forms.ChoiceField(choices=Organization.Kind.choices, required=False,
                             widget=forms.RadioSelect, label="We want to",
                             initial=Organization.Kind.CONSUMER)
    sector = forms.ChoiceField(choices=Organization.Sector.choices, required=False,
                               initial=Organization.Sector.HEALTHCARE)
    join_code = forms.CharField(max_length=32, required=False,
                                help_text="An owner or admin finds it on the organization page.")

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("password") and cleaned.get("password") != cleaned.get("password_again"):
            self.add_error("password_again", "The two passwords differ.")
        if cleaned.get("mode") == "join":
            if not cleaned.get("join_code"):
                self.add_error("join_code", "Enter the join code a colleague gave you.")
        else:
            if not cleaned.get("organization_name"):
                self.add_error("organization_name", "Give your organization a name.")
            if not cleaned.get("kind"):
                self.add_error("kind", "Choose consumer or provider.")
        return cleaned


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
            uploads = Dataset.objects.filter(owner=organization).only(
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
            bundle=bundle, dataset=c["dataset"],
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

    def __init__(self, *args, nodes=None, editing: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if nodes is not None:
            self.fields["node"].queryset = nodes
        self.fields["node"].label_from_instance = (
            lambda n: f"{n.name} — {n.gpu_count} × {n.gpu_model}, {n.region}")
        if editing:
            del self.fields["node"]

    def to_spec(self) -> OfferSpec:
        c = self.cleaned_data
        return OfferSpec(gpus_offered=c["gpus_offered"], price_per_gpu_hour=c["price_per_gpu_hour"],
                         available_from=c.get("available_from"),
                         available_until=c.get("available_until"),
                         min_duration_hours=c["min_duration_hours"],
                         max_duration_hours=c.get("max_duration_hours"),
                         accepts_custom_code=bool(c.get("accepts_custom_code")))


class DatasetUploadForm(MarketErrorMixin, forms.Form):
    file = forms.FileField(label="CSV file", help_text="UTF-8, comma-separated, with a header row.")
    name = forms.CharField(max_length=200, required=False, label="Name",
                           help_text="Defaults to the file name.")
    label_column = forms.CharField(
        max_length=128, required=False, label="Label column (classifiers)",
        help_text="Checked now: it exists, holds at least two classes, and every other column "
                  "is numeric. Leave empty for time series.")


class StakeForm(MarketErrorMixin, forms.Form):
    """Stake or request a withdrawal of stake; `request_id` (rendered with the form) makes a
    resubmitted form a no-op."""

    amount = forms.DecimalField(label="Amount (tUSD)", max_digits=20, decimal_places=6,
                                min_value=Decimal("0.000001"))
    request_id = forms.UUIDField(widget=forms.HiddenInput)


class StakeWithdrawForm(MarketErrorMixin, forms.Form):
    request_id = forms.UUIDField(widget=forms.HiddenInput)
