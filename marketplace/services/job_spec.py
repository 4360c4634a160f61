"""One job specification, validated the same way for quotes, the API and the HTML form."""

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from .. import catalogue
from ..errors import MarketError
from ..models import CodeBundle, Dataset, Organization
from ..money import is_whole_micro
from ..text import clean_name
from . import bundles, weights

MAX_NODES = 32
MAX_GPUS_PER_NODE = 16
MAX_MONEY = Decimal("1000000000")
MAX_HOURS = Decimal("8760")


@dataclass(frozen=True)
class JobSpec:
    name: str
    template: str
    dataset: str
    nodes: int
    gpus_per_node: int
    max_price_per_gpu_hour: Decimal
    budget: Decimal
    deadline: datetime
    params: dict[str, Any] = field(default_factory=dict)
    min_gpu_memory_gb: int = 0
    gpu_models: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    compliance: tuple[str, ...] = ()
    min_reliability: Decimal | None = None
    duration_hours: Decimal = Decimal("1")
    # How the nodes synchronise: {"mode": "ddp"} (default) or {"mode": "diloco", …}.
    sync: dict[str, Any] | None = None
    # A consumer's own code in place of a template: its bundle's id (services/bundles.py).
    bundle: str = ""
    # A fine-tune: the id of an uploaded weights file the model starts from (services/weights.py).
    weights: str = ""
    # Filled in by validation:
    dataset_obj: Dataset | None = None
    bundle_obj: CodeBundle | None = None
    weights_obj: Dataset | None = None
    # The provider runtime the job needs (its bundle's); "" for a template.
    runtime: str = ""

    @property
    def wants_cpu(self) -> bool:
        return catalogue.CPU in self.gpu_models

    @property
    def gpus_total(self) -> int:
        return self.nodes * self.gpus_per_node


def sync_traffic_ratio(sync: dict | None, *, nodes: int, gpus_per_node: int) -> float | None:
    """How many times fewer bytes DiLoCo sends than DDP, per node and step, by model: DDP's
    ring all-reduce sends 2·(W−1)/W of the fp32 gradients out of each node every step;
    DiLoCo's reduce-scatter and all-gather between the n node leaders send 2·(n−1)/n of
    the pseudo-gradient in the wire precision out of each node every H steps (headers and
    control messages aside: ~1 % in docs/BENCHMARKS.md). None for DDP."""
    if not sync or sync.get("mode") != "diloco" or nodes < 2:
        return None
    world = nodes * gpus_per_node
    ddp = sync["inner_steps"] * 2 * (world - 1) / world * 4
    diloco = 2 * (nodes - 1) / nodes * {"fp32": 4, "fp16": 2, "int8": 1}[sync["precision"]]
    return ddp / diloco


def _money(value: Decimal | None, field_name: str, label: str) -> Decimal:
    if value is None:
        raise MarketError(f"Set the {label}.", field=field_name)
    if value <= 0:
        raise MarketError(f"The {label} must be more than 0 tUSD.", field=field_name)
    if value > MAX_MONEY:
        raise MarketError(f"The {label} is too large.", field=field_name)
    if not is_whole_micro(value):
        raise MarketError("Amounts have at most 6 decimal places.", field=field_name)
    return value


def _resolve_bundle_dataset(ref: str, owner: Organization | None):
    """A bundle job's data: an uploaded dataset (CSV or zip) or none ("": the task makes its
    own)."""
    ref = (ref or "").strip()
    if ref in ("", "none"):
        return "", None
    if ref.isdigit():
        ds = Dataset.objects.filter(pk=int(ref), owner=owner).first() if owner else None
        if ds is None:
            raise MarketError("No dataset of yours has that id.", field="dataset")
        if ds.kind == "weights":
            raise MarketError("That upload is a weights file: give it as `weights`, and a CSV or "
                              "zip dataset (or none) as `dataset`.", field="dataset")
        return ref, ds
    raise MarketError("A code bundle's job takes the id of a dataset you uploaded (CSV or zip), "
                      "or none; bundled samples belong to the templates.", field="dataset")


def _resolve_bundle(ref: str, owner: Organization | None) -> CodeBundle:
    ref = str(ref or "").strip()
    bundle = (CodeBundle.objects.filter(pk=int(ref), owner=owner).first()
              if owner is not None and ref.isdigit() and len(ref) <= 18 else None)
    if bundle is None:
        raise MarketError("No code bundle of yours has that id (see /api/v1/bundles/).",
                          field="bundle")
    return bundle


def _resolve_dataset(ref: str, template: catalogue.Template, owner: Organization | None):
    ref = (ref or "").strip()
    if ref.startswith("sample:"):
        sample = ref.removeprefix("sample:")
        if template.sample(sample) is None:
            names = ", ".join(f"sample:{s['name']}" for s in template.samples)
            raise MarketError(f"{template.name} has no sample '{sample[:40]}'. "
                              f"Its samples: {names}.", field="dataset")
        return ref, None
    if ref.isdigit():
        ds = Dataset.objects.filter(pk=int(ref), owner=owner).first() if owner else None
        if ds is None:
            raise MarketError("No dataset of yours has that id.", field="dataset")
        return ref, ds
    raise MarketError("Choose a bundled sample (sample:<name>) or the id of a dataset you "
                      "uploaded.", field="dataset")


def job_spec_validate(*, spec: JobSpec, owner: Organization | None) -> JobSpec:
    """Return the spec normalised (defaults filled, tags lower-cased) or raise MarketError
    naming the field at fault. `owner=None` validates a quote for an anonymous visitor."""
    name = clean_name(spec.name)
    if not name or len(name) > 120:
        raise MarketError("Name the job (1 to 120 characters).", field="name")
    bundle = None
    if spec.bundle not in ("", None):
        if spec.template:
            raise MarketError("Choose a template or a code bundle, not both.", field="bundle")
        bundle = _resolve_bundle(spec.bundle, owner)
        params = bundles.params_validate(bundle, spec.params)
        dataset_ref, dataset = _resolve_bundle_dataset(spec.dataset, owner)
    else:
        template = catalogue.get_template(spec.template)
        params = template.validate_params(spec.params)
        dataset_ref, dataset = _resolve_dataset(spec.dataset, template, owner)
        if dataset is not None and dataset.kind == "weights":
            raise MarketError("That upload is a weights file: give it as `weights`, and a CSV "
                              "dataset or a sample as `dataset`.", field="dataset")
        if dataset is not None and dataset.kind != "csv":
            raise MarketError("A zip dataset is read by your own code: choose a code bundle, or a "
                              "CSV dataset for a template.", field="dataset")
    if dataset is not None and bundle is None:
        for key in ("label_column", "target_column"):
            if key in params and params[key] not in dataset.columns:
                raise MarketError(f"The dataset has no column '{params[key]}'; its columns are "
                                  f"{', '.join(dataset.columns[:20])}.", field=f"params.{key}")
    start_weights = weights.weights_resolve(spec.weights, owner)
    if not isinstance(spec.nodes, int) or not 1 <= spec.nodes <= MAX_NODES:
        raise MarketError(f"Nodes must be between 1 and {MAX_NODES}.", field="nodes")
    if not isinstance(spec.gpus_per_node, int) or not 1 <= spec.gpus_per_node <= MAX_GPUS_PER_NODE:
        raise MarketError(f"GPUs per node must be between 1 and {MAX_GPUS_PER_NODE}.",
                          field="gpus_per_node")
    sync = catalogue.validate_sync(spec.sync)
    if sync["mode"] == "diloco" and spec.nodes < 2:
        raise MarketError("DiLoCo synchronises several machines: ask for 2 or more nodes, or use "
                          "ddp on one.", field="sync.mode")
    if not 0 <= (spec.min_gpu_memory_gb or 0) <= 1024:
        raise MarketError("Minimum GPU memory must be between 0 and 1024 GB.",
                          field="min_gpu_memory_gb")
    gpu_models = tuple(dict.fromkeys(catalogue.validate_gpu_model(m, field="gpu_models")
                                     for m in spec.gpu_models))
    if catalogue.CPU in gpu_models and len(gpu_models) > 1:
        raise MarketError("Ask for CPU slots or for GPU models, not both.", field="gpu_models")
    regions = tuple(dict.fromkeys(catalogue.validate_region_token(r) for r in spec.regions))
    compliance = tuple(dict.fromkeys(t.strip().lower() for t in spec.compliance))
    catalogue.compliance_mask(list(compliance))
    if spec.min_reliability is not None and not 0 <= spec.min_reliability <= 1:
        raise MarketError("Minimum reliability is a share between 0 and 1.",
                          field="min_reliability")
    price = _money(spec.max_price_per_gpu_hour, "max_price_per_gpu_hour",
                   "maximum price per GPU-hour")
    budget = _money(spec.budget, "budget", "budget")
    hours = spec.duration_hours
    if hours is None or hours <= 0 or hours > MAX_HOURS:
        raise MarketError(f"The expected duration must be between 0 and {MAX_HOURS} hours.",
                          field="duration_hours")
    if spec.deadline is None:
        raise MarketError("Set a deadline.", field="deadline")
    if timezone.is_naive(spec.deadline):
        raise MarketError("Give the deadline with a time zone (ISO 8601, e.g. "
                          "2026-12-01T18:00:00Z).", field="deadline")
    now = timezone.now()
    if spec.deadline <= now:
        raise MarketError("The deadline is in the past.", field="deadline")
    if spec.deadline < now + timedelta(hours=float(hours)):
        raise MarketError(f"The deadline leaves less than the expected {hours} h to run.",
                          field="deadline")
    return replace(spec, name=name, params=params, dataset=dataset_ref, dataset_obj=dataset, sync=sync,
                   bundle=str(bundle.pk) if bundle else "", bundle_obj=bundle,
                   weights=str(start_weights.pk) if start_weights else "", weights_obj=start_weights,
                   runtime=bundle.runtime if bundle else "",
                   gpu_models=gpu_models, regions=regions, compliance=compliance,
                   min_gpu_memory_gb=spec.min_gpu_memory_gb or 0, max_price_per_gpu_hour=price,
                   budget=budget, duration_hours=hours)
