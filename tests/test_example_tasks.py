"""The shipped examples' tasks on their own (examples/tasks/imaging, examples/tasks/forecaster):
they read what their make_data.py writes, in the layouts a consumer uploads, and refuse
unusable data with a DatasetError that says what is wrong (the job fails with it, and no
provider is blamed). The runs on real agents: test_example_tasks_e2e."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from workers.training import task as tasks
from workers.training.task import DatasetError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "tasks"


def spec(folder: str, entry: str, *, data_dir: Path, dataset: dict | None = None, **params) -> dict:
    schema = tomllib.loads((EXAMPLES / folder / "computemesh.toml").read_text())
    defaults = {k: v["default"] for k, v in schema["params"]["properties"].items()}
    return {"bundle": {"path": str(EXAMPLES / folder), "entry": entry}, "data_dir": str(data_dir),
            "dataset": dataset or {"kind": "zip"}, "params": {**defaults, **params}}


def make(folder: str, out: Path, *args: str) -> Path:
    subprocess.run([sys.executable, str(EXAMPLES / folder / "make_data.py"), str(out), *args],
                   check=True, capture_output=True, timeout=120)
    return out


# --- imaging -------------------------------------------------------------------------------
def imaging(data_dir: Path, **params) -> tasks.Prepared:
    return tasks.prepare(spec("imaging", "task:LesionClassifier", data_dir=data_dir, **params))


def test_the_imaging_task_reads_the_class_folders_of_pgm_scans(tmp_path):
    data = make("imaging", tmp_path / "data", "--per-class", "20")
    prepared = imaging(data)
    assert prepared.task.classes == ["lesion", "normal"]
    x, y = prepared.train
    assert x.shape == (32, 1, 32, 32) and set(y.tolist()) == {0, 1}
    assert len(prepared.held_out[0]) == 8
    with torch.no_grad():
        metrics = prepared.task.evaluate(prepared.model.eval(), prepared.held_out, torch.device("cpu"))
    assert {"accuracy", "loss", "sensitivity", "specificity"} <= set(metrics)


def test_a_zip_with_one_top_folder_is_read_the_same(tmp_path):
    make("imaging", tmp_path / "data" / "scans", "--per-class", "10")
    assert imaging(tmp_path / "data").task.classes == ["lesion", "normal"]


def test_the_imaging_task_refuses_unusable_images(tmp_path):
    data = make("imaging", tmp_path / "data", "--per-class", "5")
    for path in (data / "lesion").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match="at least two class folders"):
        imaging(data)
    make("imaging", data, "--per-class", "5")
    (data / "lesion" / "scan-0000.pgm").write_bytes(b"GIF89a not a scan")
    with pytest.raises(DatasetError, match="scan-0000.pgm is not a binary PGM"):
        imaging(data)
    (data / "lesion" / "scan-0000.pgm").write_bytes(b"P5\n16 16\n255\n" + bytes(256))
    with pytest.raises(DatasetError, match="not all the same size"):
        imaging(data)


def test_the_flips_are_drawn_from_torchs_generator_so_a_replay_draws_the_same(tmp_path):
    prepared = imaging(make("imaging", tmp_path / "data", "--per-class", "20"))
    batches = []
    for seed in (1234, 1234, 99):  # the runtime seeds torch before every step, by (seed, rank, step)
        torch.manual_seed(seed)
        batches.append(prepared.task.batch(prepared.train, list(range(16)))[0])
    assert torch.equal(batches[0], batches[1])
    assert not torch.equal(batches[0], batches[2])  # another step flips other images
    assert not torch.equal(batches[0], prepared.train[0][:16])


# --- forecaster ----------------------------------------------------------------------------
def forecaster(data_dir: Path, csv: Path | None = None, **params) -> tasks.Prepared:
    dataset = {"kind": "csv", "path": str(csv)} if csv else {"kind": "zip"}
    return tasks.prepare(spec("forecaster", "task:LoadForecaster", data_dir=data_dir,
                              dataset=dataset, **params))


def test_the_forecaster_reads_the_csv_and_starts_as_the_seasonal_naive_forecast(tmp_path):
    data = make("forecaster", tmp_path / "data", "--days", "20")
    prepared = forecaster(data, data / "load.csv")
    past, future = prepared.train
    # 480 hours: training forecasts from hour 72 until the horizon would reach the held-out 20 %.
    assert past.shape == (384 - 24 - 72 + 1, 72, 6) and future.shape == (289, 24)
    with torch.no_grad():
        metrics = prepared.task.evaluate(prepared.model.eval(), prepared.held_out, torch.device("cpu"))
    assert metrics["mae"] == pytest.approx(metrics["mae_naive"], rel=1e-5) and metrics["mae"] > 0
    # The same CSV inside a zip of the data folder is found there.
    assert forecaster(data).n_train == prepared.n_train


@pytest.mark.parametrize(("content", "message"), [
    ("time,load_kw\n2026-01-01T00:00,1\n", "no 'timestamp' column"),
    ("timestamp,load_kw\n2026-01-01T01:00,1\n2026-01-01T00:00,2\n", "not in time order"),
    ("timestamp,load_kw\n2026-01-01T00:00,high\n", "not a number"),
    ("timestamp,load_kw\n" + "".join(f"2026-01-01T{h:02d}:00,{h}\n" for h in range(24)), "too few"),
])
def test_the_forecaster_refuses_unusable_csvs(tmp_path, content, message):
    (tmp_path / "load.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        forecaster(tmp_path, tmp_path / "load.csv")
