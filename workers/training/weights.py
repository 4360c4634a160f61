"""A fine-tune's input weights (issue 16): the consumer's state_dict, loaded into the task's
model before step 0, on every rank and in the verifier's replay alike (task.prepare).

The file is the consumer's bytes: loaded with `weights_only=True` (tensors and plain data,
never arbitrary pickled objects), and checked strictly against the model the task builds:
the same tensor names and shapes, or the job fails with a message that names them (never a
traceback with this machine's paths).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

SHOWN = 5  # names listed in a mismatch message


class WeightsError(RuntimeError):
    """The job's weights file cannot be loaded into its model; the message says why, in the
    consumer's terms."""


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in a weights file: a plain state_dict, or a {"model": state_dict, …}
    file such as a finished job's model.pt."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (the consumer's bytes: any failure is theirs)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise WeightsError("the weights file does not load as tensors (torch.load with "
                           f"weights_only=True): {first.replace(str(path), 'weights.pt')}") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping) or not loaded or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()):
        raise WeightsError("the weights file holds no state_dict (a mapping of tensor names to "
                           "tensors): save it with torch.save(model.state_dict(), 'weights.pt')")
    return dict(loaded)


def _names(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:SHOWN]) + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """Why `state` does not fit `model` exactly (names, then shapes), or None."""
    own = model.state_dict()
    missing, extra = own.keys() - state.keys(), state.keys() - own.keys()
    if missing or extra:
        parts = ([f"missing {_names(missing)}"] if missing else []) + \
                ([f"unexpected {_names(extra)}"] if extra else [])
        return f"its tensors are not the model's ({'; '.join(parts)})"
    wrong = [f"{k} is {tuple(state[k].shape)}, the model's {tuple(v.shape)}"
             for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        return f"its tensors have other shapes than the model's: {'; '.join(wrong[:3])}"
    return None


def load_into(model: nn.Module, path: str | Path) -> None:
    """Load the weights file at `path` into `model`, strictly; WeightsError when it does not fit."""
    state = read_state(path)
    problem = mismatch(model, state)
    if problem:
        raise WeightsError(f"the weights file does not fit the task's model: {problem}")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
