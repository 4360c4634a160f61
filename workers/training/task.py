"""The task contract (issue 16): what a training job's own code provides, and what the
runtime does with it. docs/tasks.md documents it with a worked example.

A task is a class with a few methods, in the spirit of Determined AI's PyTorchTrial and
Lightning's LightningModule:

    class MyTask(Task):
        metric = "accuracy"                      # the held-out metric the job reports
        def datasets(self):   -> (train, held_out)
        def build_model(self): -> nn.Module
        def loss(self, model, batch): -> scalar tensor
        def evaluate(self, model, held_out, device): -> {"accuracy": …, …}
        # optional
        def batch(self, data, indices): -> a batch (default: index tensors / a Dataset)
        def optimizer(self, model): -> torch.optim.Optimizer (default Adam, params' learning_rate)
        def learning_rate(self, step, total_steps): -> float or None (a schedule, by step)

The runtime (run.py) owns everything else, identically for the built-in templates
(builtin_tasks.py) and for a consumer's bundle: the process group (DDP, DiLoCo), which
indices each rank trains on at each step (schedule.py: by seed, epoch and rank), the random
seed of every (seed, rank, step), checkpoints and their SHA-256, exact resume, step replay
(replay.py), progress, pause and cancel. So a task never samples, seeds, all-reduces or
saves: what it computes is a function of its inputs, which is what lets a verifier replay it.

Order of calls (the same in training and replay, so random initialisation agrees):
torch.manual_seed(seed), Task(context), datasets(), build_model(), optimizer(model). A
fine-tune's input weights (spec `weights`: {path}) are loaded into the model right after
build_model (weights.py), so training and replay start from the same state.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import weights as start_weights
from .data import DatasetError  # re-exported: a task raises it for unusable data

__all__ = ["DatasetError", "Task", "TaskContext", "TaskError", "Prepared", "load", "prepare",
           "to_device", "eval_loss"]

EVAL_CHUNK = 1024


class TaskError(RuntimeError):
    """The task cannot be loaded or does not keep the contract; the message says why."""


@dataclass(frozen=True)
class TaskContext:
    """What a task is given: the job's params (validated against its schema, defaults filled
    in), the dataset as the platform describes it, and the folder its files are in."""

    params: dict
    dataset: dict = field(default_factory=dict)
    data_dir: Path | None = None

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0))


class Task:
    """Subclass this. `self.params`, `self.dataset`, `self.data_dir` and `self.seed` are set."""

    metric: str = "loss"  # the key of evaluate()'s result reported as the job's metric
    # Whether a smaller `metric` is better. None: from its name (loss, mae, rmse, mape, … and
    # names ending in _loss or _error are; accuracy, f1, auc, r2, … are not). The verifier
    # checks that the reported metric is not better than the model achieves in this sense.
    lower_is_better: bool | None = None

    def __init__(self, context: TaskContext):
        self.context = context
        self.params = context.params
        self.dataset = context.dataset
        self.data_dir = context.data_dir
        self.seed = context.seed

    # --- required ---------------------------------------------------------------------
    def datasets(self) -> tuple[Any, Any]:
        """(train, held_out): each a tuple of tensors of equal length (x, y, …) or a
        torch Dataset. Deterministic: the same files and params give the same data."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """The network, from self.params (and what datasets() learned about the data)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The training loss of one batch (a scalar). `model` may be DDP-wrapped: call it."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, held_out: Any, device: torch.device) -> dict[str, float]:
        """Held-out metrics, `self.metric` among them (the model is in eval mode, no grad)."""
        raise NotImplementedError

    # --- optional ---------------------------------------------------------------------
    def batch(self, data: Any, indices: list[int]) -> Any:
        """The batch of these indices: by default each tensor of a tuple indexed, or the
        Dataset's items collated."""
        if isinstance(data, tuple) and all(isinstance(t, torch.Tensor) for t in data):
            return tuple(t[indices] for t in data)
        from torch.utils.data import default_collate
        return default_collate([data[i] for i in indices])

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=float(self.params["learning_rate"]))

    def learning_rate(self, step: int, total_steps: int) -> float | None:
        """The learning rate of step `step` (0-based, of `total_steps`), or None to keep the
        optimizer's. A function of the step alone, so resume and replay follow it exactly."""
        return None


def dataset_size(data: Any) -> int:
    return len(data[0]) if isinstance(data, tuple) else len(data)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, Sequence) and not isinstance(batch, str | bytes):
        return type(batch)(to_device(v, device) for v in batch) if isinstance(batch, tuple) \
            else [to_device(v, device) for v in batch]
    return batch


# --- loading ------------------------------------------------------------------------------
def _import(entry: str, root: Path | None) -> type:
    """'module:Class' from the bundle at `root` (a folder, or one .py file), or from the
    installed packages when root is None."""
    module_name, _, class_name = entry.partition(":")
    if not module_name or not class_name:
        raise TaskError(f"the task entry {entry!r} is not 'module:Class'")
    try:
        if root is not None and root.is_file():
            spec = importlib.util.spec_from_file_location(module_name, root)
            if spec is None or spec.loader is None:
                raise TaskError(f"{root} is not a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        else:
            if root is not None:
                _forget_other_bundles(module_name.split(".")[0], root)
                if str(root) not in sys.path:
                    sys.path.insert(0, str(root))
            module = importlib.import_module(module_name)
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"the task module {module_name!r} does not import: "
                        f"{type(exc).__name__}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        # Duck-typed classes are accepted as long as they have the required methods.
        missing = [m for m in ("datasets", "build_model", "loss", "evaluate")
                   if not callable(getattr(cls, m, None))]
        if cls is None or missing:
            raise TaskError(f"{entry} is not a task class (missing: {', '.join(missing) or 'the class'})")
    return cls


_LOADED_FROM: dict[str, Path] = {}  # a bundle's top-level module name -> its bundle's folder


def _forget_other_bundles(top: str, root: Path) -> None:
    """A long-lived process (a verifier) loads several bundles: a module of the same name
    imported from another bundle's folder must not stand in for this one's."""
    previous = _LOADED_FROM.get(top)
    if previous is not None and previous != root:
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]
        if str(previous) in sys.path:
            sys.path.remove(str(previous))
    _LOADED_FROM[top] = root


def task_class(spec: Mapping[str, Any]) -> type:
    """The class a job spec names: its bundle's entry, else its built-in template's."""
    bundle = spec.get("bundle")
    if bundle:
        path = Path(bundle["path"]) if bundle.get("path") else None
        return _import(str(bundle["entry"]), path)
    from . import builtin_tasks

    template = spec.get("template")
    if template not in builtin_tasks.TEMPLATES:
        raise TaskError(f"unknown template {template!r}")
    return builtin_tasks.TEMPLATES[template]


def entry_of(spec: Mapping[str, Any]) -> str:
    """What trained a model, for its file: the bundle's entry or the template's name."""
    bundle = spec.get("bundle")
    return str(bundle["entry"]) if bundle else f"template:{spec.get('template')}"


def data_dir_of(spec: Mapping[str, Any]) -> Path | None:
    """The job's data folder: spec's data_dir, else the folder of an uploaded dataset file."""
    if spec.get("data_dir"):
        return Path(spec["data_dir"])
    path = (spec.get("dataset") or {}).get("path")
    return Path(path).parent if path else None


def load(spec: Mapping[str, Any]) -> Task:
    """The task of a job spec (run.py's SPEC.json, or replay.Job's fields)."""
    cls = task_class(spec)
    return cls(TaskContext(params=dict(spec["params"]), dataset=dict(spec.get("dataset") or {}),
                           data_dir=data_dir_of(spec)))


@dataclass
class Prepared:
    task: Task
    train: Any
    held_out: Any
    model: nn.Module

    @property
    def n_train(self) -> int:
        return dataset_size(self.train)


def prepare(spec: Mapping[str, Any]) -> Prepared:
    """Seed, task, data, model: in that order, in training and in replay alike."""
    torch.manual_seed(int(spec["params"].get("seed", 0)))
    task = load(spec)
    train, held_out = task.datasets()
    if dataset_size(train) < 1:
        raise DatasetError("The training split is empty.")
    model = task.build_model()
    if not isinstance(model, nn.Module):
        raise TaskError(f"build_model returned {type(model).__name__}, not a torch.nn.Module")
    if (spec.get("weights") or {}).get("path"):  # a fine-tune: WeightsError when it does not fit
        start_weights.load_into(model, spec["weights"]["path"])
    return Prepared(task, train, held_out, model)


def set_learning_rate(task: Task, optimizer: torch.optim.Optimizer, step: int,
                      total_steps: int) -> None:
    lr = task.learning_rate(step, total_steps)
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = float(lr)


LOWER_IS_BETTER = frozenset({"loss", "mae", "mse", "rmse", "mape", "smape", "nll", "perplexity",
                             "error", "error_rate", "wer", "cer"})


def metric_lower_is_better(task: Task) -> bool:
    if task.lower_is_better is not None:
        return bool(task.lower_is_better)
    name = task.metric.lower()
    return name in LOWER_IS_BETTER or name.endswith(("_loss", "_error", "_mae", "_mse", "_rmse"))


@torch.no_grad()
def headline(task: Task, model: nn.Module, held_out: Any, device: torch.device) -> tuple[str, float]:
    """(metric, value): the task's held-out metric, model in eval mode for it."""
    model.eval()
    try:
        metrics = task.evaluate(model, held_out, device)
    finally:
        model.train()
    if task.metric not in metrics:
        raise TaskError(f"evaluate() returned {sorted(metrics)}, without the task's metric "
                        f"{task.metric!r}")
    return task.metric, float(metrics[task.metric])


@torch.no_grad()
def eval_loss(task: Task, model: nn.Module, held_out: Any, device: torch.device) -> float:
    """The training loss on the held-out split, in chunks (benchmarks compare runs by it)."""
    model.eval()
    n = dataset_size(held_out)
    total = 0.0
    try:
        for start in range(0, n, EVAL_CHUNK):
            indices = list(range(start, min(n, start + EVAL_CHUNK)))
            batch = to_device(task.batch(held_out, indices), device)
            total += float(task.loss(model, batch)) * len(indices)
    finally:
        model.train()
    return total / max(1, n)


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Restore a checkpoint's optimizer state (moments, step counts) with the job's own
    hyper-parameters: those of the optimizer as the task built it, never the checkpoint's
    (a provider's state could claim another learning rate). A copy is loaded: torch keeps
    the given tensors as the optimizer's own buffers and steps update them in place, so a
    second replay from the same loaded checkpoint started from the first one's moments."""
    own = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(copy.deepcopy(state))
    for group, hyper in zip(optimizer.param_groups, own, strict=True):
        group.update(hyper)
