"""Datasets for the built-in templates: bundled samples and uploaded CSV files.

Every split is deterministic (seeded), so a replayed or resumed run sees the same data in
the same order. Nothing is downloaded: the samples ship inside scikit-learn or are
generated here.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HELD_OUT_SHARE = 0.2


class DatasetError(ValueError):
    """The data cannot be used for this template; the message says why."""


@dataclass
class Splits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int = 0  # 0 for regression
    # For the forecaster: the scale to turn normalised predictions back into units.
    target_scale: float = 1.0
    target_offset: float = 0.0


def _split(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(round(len(x) * (1 - HELD_OUT_SHARE)))
    train, test = order[:cut], order[cut:]
    return x[train], y[train], x[test], y[test]


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return (x_train - mean) / std, (x_test - mean) / std


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """A numeric CSV with a header row."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise DatasetError("The CSV file has no data rows.")
    header, body = rows[0], rows[1:]
    try:
        values = np.array([[float(v) for v in row] for row in body], dtype=np.float64)
    except ValueError as exc:
        raise DatasetError(f"Every value must be a number: {exc}.") from None
    if values.ndim != 2 or values.shape[1] != len(header):
        raise DatasetError("Every row must have as many values as the header has columns.")
    return header, values


# --- Tabular classification ---------------------------------------------------------
def _tabular(x: np.ndarray, labels: np.ndarray, seed: int) -> Splits:
    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise DatasetError("The label column needs at least two classes.")
    x_tr, y_tr, x_te, y_te = _split(x, y, seed)
    x_tr, x_te = _standardise(x_tr, x_te)
    return Splits(torch.tensor(x_tr, dtype=torch.float32), torch.tensor(y_tr, dtype=torch.long),
                  torch.tensor(x_te, dtype=torch.float32), torch.tensor(y_te, dtype=torch.long),
                  n_classes=len(classes))


def breast_cancer(seed: int) -> Splits:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return _tabular(data.data, data.target, seed)


def tabular_csv(path: Path, label_column: str, seed: int) -> Splits:
    header, values = read_csv(path)
    if label_column not in header:
        raise DatasetError(f"The label column '{label_column}' is not in the file.")
    i = header.index(label_column)
    return _tabular(np.delete(values, i, axis=1), values[:, i], seed)


# --- Images -------------------------------------------------------------------------
def digits(seed: int) -> Splits:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    x_tr, y_tr, x_te, y_te = _split(x, data.target, seed)
    return Splits(torch.tensor(x_tr), torch.tensor(y_tr, dtype=torch.long),
                  torch.tensor(x_te), torch.tensor(y_te, dtype=torch.long), n_classes=10)


# --- Energy load series -------------------------------------------------------------
def grid_load_series(hours: int = 17_520, seed: int = 2024) -> np.ndarray:
    """Two years of hourly (load_mw, temperature_c) with daily and weekly seasonality,
    holidays and a heating/cooling response. Generated, not measured."""
    rng = np.random.default_rng(seed)
    t = np.arange(hours)
    day_of_year = (t / 24.0) % 365.0
    hour = t % 24
    weekday = (t // 24) % 7
    temperature = (10 - 9 * np.cos(2 * math.pi * (day_of_year - 15) / 365.0)
                   + 4 * np.sin(2 * math.pi * (hour - 9) / 24.0) + rng.normal(0, 1.5, hours))
    daily = 120 * np.exp(-((hour - 19) ** 2) / 8.0) + 80 * np.exp(-((hour - 8) ** 2) / 6.0)
    weekly = np.where(weekday >= 5, -90.0, 0.0)
    holidays = np.isin((t // 24) % 365, [0, 120, 358, 359, 365 + 0]).astype(float) * -110
    climate = 6.0 * np.maximum(0, 15 - temperature) + 9.0 * np.maximum(0, temperature - 22)
    load = 900 + daily + weekly + holidays + climate + rng.normal(0, 12, hours)
    return np.stack([load, temperature], axis=1)


def forecast_windows(series: np.ndarray, lookback: int, horizon: int, seed: int) -> Splits:
    """Sliding windows over (target, features…); the held-out split is the last 20 % in
    time, as forecasting demands."""
    if len(series) < lookback + horizon + 10:
        raise DatasetError(f"The series needs at least {lookback + horizon + 10} rows for this "
                           "lookback and horizon.")
    cut = int(len(series) * (1 - HELD_OUT_SHARE))
    mean, std = series[:cut].mean(axis=0), series[:cut].std(axis=0)
    std[std == 0] = 1.0
    norm = ((series - mean) / std).astype(np.float32)
    starts = np.arange(0, len(series) - lookback - horizon + 1, max(1, horizon // 4))
    x = np.stack([norm[s:s + lookback] for s in starts])
    y = np.stack([norm[s + lookback:s + lookback + horizon, 0] for s in starts])
    ends = starts + lookback + horizon
    train, test = ends <= cut, starts >= cut - lookback
    order = np.random.default_rng(seed).permutation(int(train.sum()))
    return Splits(torch.tensor(x[train][order]), torch.tensor(y[train][order]),
                  torch.tensor(x[test]), torch.tensor(y[test]),
                  target_scale=float(std[0]), target_offset=float(mean[0]))


def forecast_csv(path: Path, target_column: str, lookback: int, horizon: int, seed: int) -> Splits:
    header, values = read_csv(path)
    if target_column not in header:
        raise DatasetError(f"The target column '{target_column}' is not in the file.")
    i = header.index(target_column)
    series = np.concatenate([values[:, i:i + 1], np.delete(values, i, axis=1)], axis=1)
    return forecast_windows(series, lookback, horizon, seed)


def load(template: str, dataset: dict, params: dict) -> Splits:
    """`dataset` is {"kind": "sample", "name": …} or {"kind": "csv", "path": …}."""
    seed = int(params.get("seed", 0))
    kind = dataset.get("kind")
    if template == "tabular-classifier":
        if kind == "sample" and dataset.get("name") == "breast-cancer":
            return breast_cancer(seed)
        if kind == "csv":
            return tabular_csv(Path(dataset["path"]), params.get("label_column", "label"), seed)
    elif template == "image-classifier":
        if kind == "sample" and dataset.get("name") == "digits":
            return digits(seed)
    elif template == "load-forecast":
        lookback, horizon = int(params["lookback_hours"]), int(params["horizon_hours"])
        if kind == "sample" and dataset.get("name") == "grid-load":
            return forecast_windows(grid_load_series(), lookback, horizon, seed)
        if kind == "csv":
            return forecast_csv(Path(dataset["path"]), params.get("target_column", "load_mw"),
                                lookback, horizon, seed)
    raise DatasetError(f"Template {template} cannot use dataset {dataset.get('name') or kind}.")
