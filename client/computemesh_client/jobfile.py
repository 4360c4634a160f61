"""Job files: YAML (.yaml/.yml) or TOML (.toml) holding the body of POST /api/v1/jobs/,
plus what only the command line acts on:

```yaml
name: Sepsis risk
template: tabular-classifier    # or `bundle:` your own code, in place of a template:
# bundle: ./my_task.zip         #   a local .py/.zip/.tar.gz (uploaded first) or a bundle's id
# weights: ./pretrained.pt      # a fine-tune: a local state_dict (uploaded first) or its id
params: {epochs: 10}
data: ./patients.csv          # a local CSV: `run` uploads it and uses its id as `dataset`
label_column: label           # for that upload
# dataset: sample:breast-cancer   # or a bundled sample / an uploaded dataset's id
nodes: 1
gpus_per_node: 2
gpu_models: [cpu]
regions: [EU]
compliance: [gdpr]
max_price_per_gpu_hour: "1.00"   # the price ceiling, tUSD per GPU-hour
budget: "10.00"                  # tUSD
deadline: 1d                     # ISO 8601, or from now: 30m, 12h, 3d
sync: {mode: diloco, inner_steps: 20}   # or just `sync: ddp` (the default)
```
"""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from .errors import EXIT_USAGE, ComputeMeshError

SPEC_FIELDS = ("name", "template", "bundle", "weights", "params", "dataset", "nodes", "gpus_per_node", "sync",
               "min_gpu_memory_gb", "gpu_models", "regions", "compliance", "min_reliability",
               "max_price_per_gpu_hour", "budget", "deadline", "duration_hours")
LOCAL_FIELDS = ("data", "label_column")
ALIASES = {"price_ceiling": "max_price_per_gpu_hour", "max_price": "max_price_per_gpu_hour",
           "gpus": "gpus_per_node", "region": "regions", "gpu_model": "gpu_models"}
LISTS = ("gpu_models", "regions", "compliance")
MONEY = ("max_price_per_gpu_hour", "budget", "min_reliability", "duration_hours")
DEFAULT_DEADLINE = "1d"


class JobFileError(ComputeMeshError):
    exit_code = EXIT_USAGE


def read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise JobFileError(f"cannot read job file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise JobFileError(f"job file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: "
                           f"{first}") from None
    if not isinstance(data, dict):
        raise JobFileError(f"job file {path} must hold a mapping of fields")
    return normalize(data, base=path.parent)


def normalize(data: dict[str, Any], *, base: Path | None = None) -> dict[str, Any]:
    """Aliases resolved, single values of list fields made lists, money as strings,
    relative deadlines made absolute, `data` made relative to the job file. Unknown
    fields are refused (a typo must not silently drop a constraint)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = ALIASES.get(key, key)
        if key not in SPEC_FIELDS and key not in LOCAL_FIELDS:
            raise JobFileError(f"unknown job field '{key}' (known: {', '.join(SPEC_FIELDS + LOCAL_FIELDS)})")
        if value is None:
            continue
        if key in LISTS and not isinstance(value, list):
            value = [value]
        if key in MONEY:
            value = str(value)
        if key == "deadline":
            value = deadline(value)
        if key == "sync" and isinstance(value, str):
            value = {"mode": value}  # `sync: diloco` for {"mode": "diloco"}
        if key == "data" and base is not None:
            value = str((base / str(value)).resolve()) if not Path(str(value)).is_absolute() else str(value)
        if key in ("bundle", "weights"):
            value = bundle_ref(value, base)
        out[key] = value
    return out


def bundle_ref(value: Any, base: Path | None) -> int | str:
    """A bundle's (or weights file's) id, or a local file to upload (made relative to the
    job file)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    if base is not None and not Path(text).is_absolute():
        return str((base / text).resolve())
    return text


_RELATIVE = re.compile(r"^\+?(\d+(?:\.\d+)?)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def deadline(value: Any, *, now: datetime | None = None) -> str:
    """ISO 8601 as it is (a date-time without a zone is UTC); `30m`, `12h`, `3d`, `1w`
    from now."""
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        return value.isoformat()
    text = str(value).strip()
    match = _RELATIVE.match(text)
    if match:
        delta = timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
        return ((now or datetime.now(UTC)) + delta).replace(microsecond=0).isoformat()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise JobFileError(f"deadline '{text}' is neither ISO 8601 nor a time from now "
                           "such as 12h or 3d") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()


def spec_of(fields: dict[str, Any]) -> dict[str, Any]:
    """The API body: spec fields only, a deadline filled in when none was given."""
    spec = {k: v for k, v in fields.items() if k in SPEC_FIELDS}
    spec.setdefault("deadline", deadline(DEFAULT_DEADLINE))
    return spec
