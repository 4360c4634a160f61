"""Checking one attempt's work, and one uploaded checkpoint, with torch.

Findings carry the platform's dispute reasons as plain strings (the values of
`Dispute.Reason`; tests/test_verify_wall.py keeps the two in step).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from workers.agent import bundle_fetch
from workers.training import checkpoint as ckpt_io
from workers.training import determinism, replay
from workers.training import task as tasks

REPLAY_MISMATCH = "replay_mismatch"
ARTIFACT_MISMATCH = "artifact_mismatch"
REASONS = (REPLAY_MISMATCH, ARTIFACT_MISMATCH)


@dataclass(frozen=True)
class AttemptPlan:
    """What the platform decided to check of one attempt."""

    template: str
    params: dict
    world_size: int
    # step → file, the counted ones and the resume point (None: the initial state at step 0)
    checkpoints: dict[int, str | None]
    segments: list[tuple[int, int]]  # (from_step, to_step) to replay
    threshold: float
    # The final model's check (a finished attempt): the uploaded model's file and the
    # counted checkpoint at the final step (None: there is none). A broken attempt's check
    # replays segments only.
    check_model: bool = False
    artifact: str | None = None
    final_checkpoint: str | None = None
    final_step: int | None = None
    # DDP across nodes: each node's own copy of every rank's gradient commitments (node
    # rank → rows {step, grad, param}) for the segments' steps; None for other attempts.
    commitments: dict[int, list[dict]] | None = None
    # The job's own task (docs/tasks.md) in place of a template: {path, entry}, or as the
    # platform stores it, {archive, kind, entry} (unpacked here: `_materialized`); its data folder.
    bundle: dict | None = None
    data_dir: str | None = None
    # A fine-tune's input weights ({path}): replay from step 0 starts from them, as training did.
    weights: dict | None = None
    # A bundle's determinism as checked before the consumer paid (check_determinism, stored
    # by the platform): reused here; None: checked now.
    determinism: dict | None = None


@dataclass
class AttemptResult:
    segments: list[dict] = field(default_factory=list)
    replay_steps: int = 0
    metric_name: str | None = None
    metric_measured: float | None = None  # None: the model could not be evaluated
    metric_lower_is_better: bool = False  # the task's sense of its metric (tasks.metric_lower_is_better)
    findings: list[tuple[str, str]] = field(default_factory=list)  # (reason, detail)
    # For the first failed segment of a DDP attempt across nodes: the ranks whose committed
    # gradients were not their share (replay.attribute_segment; empty ranks: nobody named).
    attribution: dict | None = None
    # A consumer's own task: whether it replays to the same bits twice here (determinism.py).
    # One that does not is checked by its final model and held-out evaluation only.
    determinism: dict | None = None


class _Unusable(Exception):
    """A file the provider uploaded that holds no usable model: its uploader's finding."""

    def __init__(self, what: str):
        super().__init__(what)
        self.finding = (ARTIFACT_MISMATCH, what)


def _load_model(path: str, what: str) -> dict:
    """A model state from a file the provider uploaded; a file that does not load (or holds
    no model) is the uploader's finding, not an error of the check."""
    try:
        state = ckpt_io.load(path)
    except Exception as exc:  # noqa: BLE001  (any failure to read the provider's bytes)
        raise _Unusable(f"{what} does not load: {str(exc)[:200]}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise _Unusable(f"{what} holds no model state.")
    return state["model"]


def _replay_segments(plan: AttemptPlan, runner: replay.Replayer, out: AttemptResult) -> None:
    for a, b in plan.segments:
        try:
            result = replay.check_segment(runner, plan.checkpoints[a], plan.checkpoints[b],
                                          threshold=plan.threshold)
        except replay.SegmentError as exc:
            out.segments.append({"from_step": a, "to_step": b, "rel_l2": None, "passed": False,
                                 "error": str(exc)[:300]})
            out.findings.append((REPLAY_MISMATCH, f"Steps {a}..{b} cannot be replayed from the "
                                                  f"committed checkpoints: {exc}"))
            continue
        out.segments.append(result.as_dict())
        out.replay_steps += b - a
        if not result.passed:
            out.findings.append((REPLAY_MISMATCH, (
                f"Replaying steps {a}..{b} gives parameters {result.rel_l2:.2e} (relative L2) "
                f"from the committed checkpoint at step {b}; the threshold is {plan.threshold:.0e}.")))
            if plan.commitments is not None and out.attribution is None:
                out.attribution = _attribute(plan, runner, a, b)


def _attribute(plan: AttemptPlan, runner: replay.Replayer, a: int, b: int) -> dict:
    """Whose committed gradients differ from the replay of a failed segment (see
    replay.attribute_segment: nobody, unless every node's copy agrees and ranks stand out)."""
    path = plan.checkpoints[a]
    start = ckpt_io.load(path) if path is not None else runner.initial_state()
    return replay.attribute_segment(runner, start, plan.commitments or {}, to_step=b)


def _check_model(plan: AttemptPlan, runner: replay.Replayer, out: AttemptResult) -> None:
    """The final model: the last committed checkpoint's, and evaluated on the held-out split.
    Rank 0 uploaded both files: one that does not load is its finding."""
    if not plan.artifact:
        out.findings.append((ARTIFACT_MISMATCH, "No model was uploaded."))
        return
    try:
        artifact = _load_model(plan.artifact, "The model uploaded")
        if plan.final_checkpoint is not None:
            final_model = _load_model(plan.final_checkpoint, f"The checkpoint at step {plan.final_step}")
            if replay.rel_l2(artifact, final_model) != 0:
                out.findings.append((ARTIFACT_MISMATCH, f"The model uploaded differs from the checkpoint "
                                                        f"committed at step {plan.final_step}."))
    except _Unusable as bad:
        out.findings.append(bad.finding)
        return
    try:
        out.metric_name, out.metric_measured = runner.evaluate(artifact)
        out.metric_lower_is_better = runner.metric_lower_is_better
    except (RuntimeError, ValueError, KeyError) as exc:  # tensors that are not the job's model
        out.findings.append((ARTIFACT_MISMATCH, f"The model uploaded is not this job's model: "
                                                f"{str(exc)[:200]}"))


@contextlib.contextmanager
def _materialized(plan: dict, dataset: dict) -> Iterator[tuple[dict, dict]]:
    """A bundle's archive and a zip dataset as the runtime sees them on a provider: unpacked
    into a private scratch folder, with the agent's checks (no link, no `..`, bounded)."""
    bundle = plan.get("bundle") or {}
    if not bundle.get("archive") and not dataset.get("archive"):
        yield plan, dataset
        return
    with tempfile.TemporaryDirectory(prefix="cm-verify-inputs-") as scratch:
        plan, dataset = dict(plan), dict(dataset)
        if bundle.get("archive"):
            folder = Path(scratch) / bundle_fetch.FOLDER
            bundle_fetch.unpack(Path(bundle["archive"]), str(bundle["kind"]), folder)
            plan["bundle"] = {"path": str(bundle_fetch.root_of(folder)), "entry": str(bundle["entry"])}
        if dataset.get("archive"):
            folder = Path(scratch) / bundle_fetch.DATA_FOLDER
            bundle_fetch.unpack(Path(dataset["archive"]), "zip", folder,
                                max_entries=bundle_fetch.DATA_MAX_ENTRIES,
                                max_bytes=bundle_fetch.DATA_MAX_BYTES)
            dataset = {"kind": "zip", "data_dir": str(folder)}
            plan["data_dir"] = str(folder)
        yield plan, dataset


def check_attempt(plan: dict, dataset: dict) -> dict:
    """Replay the chosen segments and, for a finished attempt, check the final model.
    `plan` holds AttemptPlan's fields, `dataset` is as the runtime loads it ({"kind":
    "sample", …}, {"kind": "csv", "path": …}, or a zip's {"kind": "zip", "archive": …});
    the result is AttemptResult's fields."""
    with _materialized(plan, dataset) as (plan, dataset):
        return asdict(_check_attempt(AttemptPlan(**plan), dataset))


def _check_attempt(plan: AttemptPlan, dataset: dict) -> AttemptResult:
    runner = replay.Replayer(replay.Job(template=plan.template, params=plan.params, dataset=dataset,
                                        world_size=plan.world_size, bundle=plan.bundle,
                                        data_dir=plan.data_dir, weights=plan.weights))
    out = AttemptResult()
    if plan.bundle and plan.segments:
        # A consumer's task decides its own randomness: replay is evidence only if the task
        # gives the same bits twice from the same state under the runtime's seeding.
        out.determinism = plan.determinism or determinism.check(runner).as_dict()
        if not out.determinism["deterministic"]:
            plan = replace(plan, segments=[])
    _replay_segments(plan, runner, out)
    if plan.check_model:
        _check_model(plan, runner, out)
    return out


def check_determinism(plan: dict, dataset: dict) -> dict:
    """Does a consumer's task replay to the same bits twice (workers/training/determinism.py)?
    Asked before the consumer pays, once per task, data, params and world size. `plan`:
    {params, world_size, bundle (as the platform stores it), data_dir}; `dataset` as for
    check_attempt. Returns Determinism.as_dict()."""
    with _materialized(plan, dataset) as (plan, dataset):
        runner = replay.Replayer(replay.Job(template="", params=plan["params"], dataset=dataset,
                                            world_size=int(plan["world_size"]), bundle=plan["bundle"],
                                            data_dir=plan.get("data_dir")))
        return determinism.check(runner).as_dict()


def checkpoint_problem(path: str, *, step: int, template: str, params: dict, dataset: dict,
                       world_size: int, bundle: dict | None = None,
                       data_dir: str | None = None) -> str | None:
    """Why a checkpoint cannot be resumed from, or None (see _checkpoint_problem)."""
    inputs: dict = {"bundle": bundle, "data_dir": data_dir}
    with _materialized(inputs, dataset) as (inputs, dataset):
        return _checkpoint_problem(path, step=step, template=template, params=params, dataset=dataset,
                                   world_size=world_size, bundle=inputs["bundle"],
                                   data_dir=inputs["data_dir"])


def _checkpoint_problem(path: str, *, step: int, template: str, params: dict, dataset: dict,
                        world_size: int, bundle: dict | None, data_dir: str | None) -> str | None:
    """Why a checkpoint cannot be resumed from, or None: it loads as tensors and plain data,
    holds this job's model (same tensor names and shapes) and an optimizer state that fits it,
    and says the step it was uploaded as. The same steps as the runtime's resume."""
    try:
        state = ckpt_io.load(path)
    except Exception as exc:  # noqa: BLE001  (any failure to read the provider's bytes)
        return f"it does not load as tensors (torch.load, weights_only=True): {str(exc)[:200]}"
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        return "it holds no model state"
    if state.get("step") != step or not isinstance(state.get("step"), int):
        return f"it says step {str(state.get('step'))[:20]}, but was uploaded as step {step}"
    runner = replay.Replayer(replay.Job(template=template, params=params, dataset=dataset,
                                        world_size=world_size, bundle=bundle, data_dir=data_dir))
    model = runner.fresh_model()
    opt = runner.task.optimizer(model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state["model"].items() if hasattr(v, "shape")}
    if got.keys() != shapes.keys():
        missing, extra = sorted(shapes.keys() - got.keys()), sorted(got.keys() - shapes.keys())
        return (f"its tensors are not the {template or 'task'} model's (missing "
                f"{', '.join(missing[:5]) or 'none'}; unexpected {', '.join(extra[:5]) or 'none'})")
    wrong = [f"{k} {got[k]} instead of {shapes[k]}" for k in shapes if got[k] != shapes[k]]
    if wrong:
        return f"its tensors have the wrong shapes: {'; '.join(wrong[:3])}"
    if step > runner.plan.total_steps:
        return f"step {step} is past the job's last step {runner.plan.total_steps}"
    optimizer_state = state.get("optimizer")
    if not isinstance(optimizer_state, dict):
        return "it holds no optimizer state"
    try:
        model.load_state_dict(state["model"])
        tasks.load_optimizer(opt, optimizer_state)
    except Exception as exc:  # noqa: BLE001  (a resume would fail the same way)
        return f"it cannot be resumed from: {str(exc)[:200]}"
    return None
