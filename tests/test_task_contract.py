"""The task contract (workers/training/task.py, issue 16): the built-in templates as tasks
train exactly as the template code did, a task is loaded from a bundle's file or folder,
and one that breaks the contract is refused with a reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workers.training import data, nets, schedule
from workers.training import task as tasks

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tasks" / "vibration"

TEMPLATES = {
    "tabular-classifier": ({"kind": "sample", "name": "breast-cancer"},
                           {"hidden_units": 16, "hidden_layers": 2, "dropout": 0.1}),
    "image-classifier": ({"kind": "sample", "name": "digits"}, {"channels": 8}),
    "load-forecast": ({"kind": "sample", "name": "grid-load"},
                      {"lookback_hours": 24, "horizon_hours": 6, "hidden_size": 8}),
}


def _train_old_way(template: str, dataset: dict, params: dict, steps: int) -> dict:
    """What run.py did before tasks: data.load, nets.build, schedule.optimizer, loss_fn."""
    torch.manual_seed(params["seed"])
    splits = data.load(template, dataset, params)
    model, loss_fn = nets.build(template, params, splits)
    opt = schedule.optimizer(model, params)
    for step in range(steps):
        indices = list(range(step * 8, step * 8 + 8))
        torch.manual_seed(schedule.step_seed(params["seed"], 0, step))
        opt.zero_grad(set_to_none=True)
        loss_fn(model(splits.x_train[indices]), splits.y_train[indices]).backward()
        opt.step()
    metric = nets.evaluate(template, model, splits, torch.device("cpu"))
    return {"state": model.state_dict(), "metric": metric}


def _train_as_task(template: str, dataset: dict, params: dict, steps: int) -> dict:
    prepared = tasks.prepare({"template": template, "params": params, "dataset": dataset})
    task, model = prepared.task, prepared.model
    opt = task.optimizer(model)
    for step in range(steps):
        indices = list(range(step * 8, step * 8 + 8))
        torch.manual_seed(schedule.step_seed(params["seed"], 0, step))
        opt.zero_grad(set_to_none=True)
        task.loss(model, task.batch(prepared.train, indices)).backward()
        opt.step()
    return {"state": model.state_dict(),
            "metric": tasks.headline(task, model, prepared.held_out, torch.device("cpu"))}


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_a_template_as_a_task_trains_bit_for_bit_as_the_template_code(template):
    dataset, own = TEMPLATES[template]
    params = {"epochs": 1, "batch_size": 8, "learning_rate": 0.01, "seed": 3, **own}
    old, new = (f(template, dataset, params, steps=5) for f in (_train_old_way, _train_as_task))
    assert old["state"].keys() == new["state"].keys()
    for name, tensor in old["state"].items():
        assert torch.equal(tensor, new["state"][name]), name
    assert old["metric"] == new["metric"]


@pytest.fixture(scope="module")
def vibration_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vibration-data")
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(out), "--windows", "600"],
                   check=True, capture_output=True, cwd=ROOT)
    return out


def vibration_spec(data_dir: Path, **params) -> dict:
    return {"bundle": {"path": str(EXAMPLE), "entry": "task:VibrationFaults"},
            "dataset": {"kind": "files"}, "data_dir": str(data_dir),
            "params": {"epochs": 2, "batch_size": 16, "learning_rate": 0.05, "channels": 8,
                       "label_smoothing": 0.05, "checkpoint_every": 10, "seed": 1, **params}}


def test_the_worked_example_loads_from_its_folder_and_from_its_file(vibration_data):
    for bundle in ({"path": str(EXAMPLE), "entry": "task:VibrationFaults"},
                   {"path": str(EXAMPLE / "task.py"), "entry": "task:VibrationFaults"}):
        prepared = tasks.prepare({**vibration_spec(vibration_data), "bundle": bundle})
        assert type(prepared.task).__name__ == "VibrationFaults"
        assert prepared.n_train == 480 and tasks.dataset_size(prepared.held_out) == 120
        metric, value = tasks.headline(prepared.task, prepared.model, prepared.held_out, torch.device("cpu"))
        assert metric == "accuracy" and 0 <= value <= 1


def test_its_data_errors_are_the_consumers(tmp_path):
    with pytest.raises(tasks.DatasetError, match="vibration.csv"):
        tasks.prepare(vibration_spec(tmp_path))


@pytest.mark.parametrize(("source", "entry", "message"), [
    ("import no_such_package\n", "task:T", "does not import: ModuleNotFoundError"),
    ("class T:\n    def loss(self, m, b): ...\n", "task:T", "missing: datasets, build_model, evaluate"),
    ("X = 1\n", "task:T", "not a task class"),
    ("X = 1\n", "task", "is not 'module:Class'"),
])
def test_a_task_that_breaks_the_contract_is_refused_with_a_reason(tmp_path, source, entry, message):
    (tmp_path / "task.py").write_text(source)
    with pytest.raises(tasks.TaskError, match=message):
        tasks.load({"bundle": {"path": str(tmp_path / "task.py"), "entry": entry}, "params": {}})


def test_the_optimizer_state_keeps_the_jobs_hyper_parameters():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    state["param_groups"][0]["lr"] = 10.0  # what a provider's checkpoint might claim
    fresh = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tasks.load_optimizer(fresh, state)
    assert fresh.param_groups[0]["lr"] == 0.1
    assert fresh.state_dict()["state"][0]["momentum_buffer"] is not None


def test_two_bundles_with_a_module_of_the_same_name_do_not_mix(tmp_path):
    for name, value in (("a", 1), ("b", 2)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "task.py").write_text(
            "from workers.training.task import Task\n"
            f"class T(Task):\n    VALUE = {value}\n")
        cls = tasks.task_class({"bundle": {"path": str(folder), "entry": "task:T"}})
        assert cls.VALUE == value


def test_loading_an_optimizer_state_never_changes_the_state_it_was_given():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    before = state["state"][0]["exp_avg"].clone()
    fresh = torch.optim.Adam(model.parameters(), lr=0.1)
    tasks.load_optimizer(fresh, state)
    fresh.step()
    assert torch.equal(state["state"][0]["exp_avg"], before)
