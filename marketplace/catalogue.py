"""Controlled vocabularies: regions, GPU models, compliance tags, training templates.

The template catalogue is data (workers/training/catalogue.json) that the platform and
the training runtime both read; the platform never imports the runtime.
"""

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from .errors import MarketError

# <continent or bloc>-<ISO 3166 country, or US state> -> human name
REGIONS: dict[str, str] = {
    "EU-DE": "Germany",
    "EU-FR": "France",
    "EU-NL": "Netherlands",
    "EU-SE": "Sweden",
    "EU-FI": "Finland",
    "EU-IE": "Ireland",
    "EU-PL": "Poland",
    "EU-ES": "Spain",
    "EU-IT": "Italy",
    "UK-GB": "United Kingdom",
    "CH-CH": "Switzerland",
    "NO-NO": "Norway",
    "US-CA": "California, USA",
    "US-OR": "Oregon, USA",
    "US-TX": "Texas, USA",
    "US-VA": "Virginia, USA",
    "US-NY": "New York, USA",
    "AP-SG": "Singapore",
    "AP-JP": "Japan",
    "AP-KR": "South Korea",
    "AP-IN": "India",
    "AP-AU": "Australia",
    "SA-BR": "Brazil",
}
REGION_BLOCS = sorted({code.split("-")[0] for code in REGIONS})


def region_matches(token: str, region: str) -> bool:
    """A job's region token is a full code (`EU-DE`) or a bloc (`EU`)."""
    return token == region or token == region.split("-")[0]


def region_codes(tokens) -> list[str]:
    """The region codes a job's or a search's tokens cover (blocs expanded), so that the
    database can match them with an index: `region IN (…)`."""
    return sorted({code for code in REGIONS for token in tokens if region_matches(token, code)})


def validate_region_token(token: str, *, field: str = "regions") -> str:
    token = token.strip().upper()
    if token in REGIONS or token in REGION_BLOCS:
        return token
    raise MarketError(
        f"Unknown region '{token[:40]}'. Use a code such as EU-DE or US-CA, or a bloc such as EU.",
        field=field,
    )


# Name -> memory per GPU in GB. "cpu" is a real node kind: it offers CPU training slots.
GPU_MODELS: dict[str, int] = {
    "RTX 3090": 24,
    "RTX 4090": 24,
    "RTX A6000": 48,
    "L4": 24,
    "L40S": 48,
    "A100 40GB": 40,
    "A100 80GB": 80,
    "H100 80GB": 80,
    "H200 141GB": 141,
    "cpu": 0,
}
CPU = "cpu"


def validate_gpu_model(name: str, *, field: str = "gpu_model") -> str:
    if name in GPU_MODELS:
        return name
    known = ", ".join(GPU_MODELS)
    raise MarketError(f"Unknown GPU model '{name[:40]}'. Known models: {known}.", field=field)


# Tag -> human name. A tag is a provider's claim until an admin verifies it.
COMPLIANCE_TAGS: dict[str, str] = {
    "hipaa": "HIPAA-ready",
    "gdpr": "GDPR (EU data stays in the EU)",
    "iso27001": "ISO/IEC 27001",
    "soc2": "SOC 2 Type II",
}
_TAG_BITS = {tag: 1 << i for i, tag in enumerate(COMPLIANCE_TAGS)}


def compliance_mask(tags: list[str] | tuple[str, ...], *, field: str = "compliance") -> int:
    """Tags as a bit mask, so that `has all of these tags` is one indexed integer test."""
    mask = 0
    for tag in tags:
        tag = tag.strip().lower()
        if tag not in _TAG_BITS:
            known = ", ".join(COMPLIANCE_TAGS)
            raise MarketError(f"Unknown compliance tag '{tag[:40]}'. Known tags: {known}.",
                              field=field)
        mask |= _TAG_BITS[tag]
    return mask


def masks_with(mask: int) -> list[int]:
    """Every tag mask that contains `mask`: `compliance_verified IN (…)` can use an index,
    where a bitwise AND cannot."""
    return [m for m in range(1 << len(_TAG_BITS)) if m & mask == mask]


def compliance_tags(mask: int) -> list[str]:
    return [tag for tag, bit in _TAG_BITS.items() if mask & bit]


# --- Training templates -------------------------------------------------------------
CATALOGUE_PATH = Path(__file__).resolve().parent.parent / "workers" / "training" / "catalogue.json"


@dataclass(frozen=True)
class Template:
    name: str
    title: str
    sector: str
    description: str
    metric: str
    dataset_kind: str
    params_schema: dict[str, Any]
    samples: tuple[dict[str, Any], ...]

    def defaults(self) -> dict[str, Any]:
        return {k: v["default"] for k, v in self.params_schema["properties"].items()
                if "default" in v}

    def sample(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.samples if s["name"] == name), None)

    def validate_params(self, params: Any) -> dict[str, Any]:
        """Return the params with defaults filled in, or raise naming the field at fault."""
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise MarketError("Hyper-parameters must be a JSON object.", field="params")
        validator = jsonschema.Draft202012Validator(self.params_schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(params))
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path)
            if error.validator == "additionalProperties":
                known = ", ".join(self.params_schema["properties"])
                message = f"{error.message}. Known hyper-parameters: {known}."
            else:
                message = f"{where}: {error.message}" if where else error.message
            raise MarketError(f"Invalid hyper-parameters for {self.name}: {message}",
                              field=f"params.{where}" if where else "params")
        return {**self.defaults(), **params}


@cache
def templates() -> dict[str, Template]:
    data = json.loads(CATALOGUE_PATH.read_text())
    return {
        t["name"]: Template(
            name=t["name"], title=t["title"], sector=t["sector"], description=t["description"],
            metric=t["metric"], dataset_kind=t["dataset_kind"], params_schema=t["params"],
            samples=tuple(t["samples"]),
        )
        for t in data["templates"]
    }


# --- How a multi-node job synchronises (the job's `sync`) ----------------------------------
@dataclass(frozen=True)
class SyncMode:
    name: str
    title: str
    description: str
    schema: dict[str, Any]

    def defaults(self) -> dict[str, Any]:
        return {k: v["default"] for k, v in self.schema["properties"].items() if "default" in v}


@cache
def sync_modes() -> dict[str, SyncMode]:
    data = json.loads(CATALOGUE_PATH.read_text())
    return {name: SyncMode(name=name, title=m["title"], description=m["description"],
                           schema=m["schema"])
            for name, m in data["sync"].items()}


DEFAULT_SYNC = {"mode": "ddp"}


def validate_sync(sync: Any) -> dict[str, Any]:
    """Return the sync settings with defaults filled in, or raise naming the field at fault."""
    if sync is None or sync == {}:
        return dict(DEFAULT_SYNC)
    modes = sync_modes()
    if not isinstance(sync, dict):
        raise MarketError('sync must be a JSON object, e.g. {"mode": "ddp"} or {"mode": "diloco", '
                          '"inner_steps": 50}.', field="sync")
    mode = sync.get("mode", "ddp")
    if mode not in modes:
        raise MarketError(f"Unknown sync mode '{str(mode)[:40]}'. Modes: {', '.join(modes)}.",
                          field="sync.mode")
    schema = modes[mode].schema
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors({"mode": mode, **sync}))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "additionalProperties":
            known = ", ".join(k for k in schema["properties"] if k != "mode") or "none"
            message = f"{error.message}. Settings of {mode}: {known}."
        else:
            message = f"{where}: {error.message}" if where else error.message
        raise MarketError(f"Invalid sync settings: {message}", field=f"sync.{where}" if where else "sync")
    return {"mode": mode, **modes[mode].defaults(), **sync}


def get_template(name: str) -> Template:
    try:
        return templates()[name]
    except (KeyError, TypeError):
        known = ", ".join(templates())
        raise MarketError(f"Unknown template '{str(name)[:60]}'. Available: {known}.",
                          field="template") from None
