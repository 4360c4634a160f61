"""An energy forecaster for an energy start-up: a network of the consumer's own design that
forecasts a site's electrical load for the next day, hour by hour, from the past days'
load and temperature, trained by ComputeMesh's runtime on an uploaded CSV.

The data is a CSV (make_data.py writes load.csv), uploaded as the job's dataset or inside
a zip of its data folder, with a `timestamp` column (ISO 8601, one row per hour, in time
order), the target column (`load_kw`, the `target` param) and any other numeric columns as
covariates (`temperature_c`, …). The model is a dilated causal 1-D convolution network
that forecasts the difference from "the same hour yesterday" (the seasonal naive
forecast), which it starts from; the held-out metric is the mean absolute error in kW on
the last part of the series (a chronological split: no future leaks into training).
"""

from __future__ import annotations

import csv
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workers.training.task import DatasetError, Task

DAY = 24


def read_series(path: Path, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target values, covariates [hours × k], calendar features [hours × 4]) of the CSV."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise DatasetError(f"{path.name} has no data rows.")
    header = [h.strip() for h in rows[0]]
    for needed in ("timestamp", target):
        if needed not in header:
            raise DatasetError(f"{path.name} has no '{needed}' column (columns: {', '.join(header)}).")
    ts, ti = header.index("timestamp"), header.index(target)
    others = [i for i in range(len(header)) if i not in (ts, ti)]
    stamps, values = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            stamps.append(datetime.fromisoformat(row[ts].strip()))
            values.append([float(row[ti])] + [float(row[i]) for i in others])
        except (ValueError, IndexError):
            raise DatasetError(f"{path.name} line {line}: a timestamp that is not ISO 8601 or a "
                               "value that is not a number.") from None
    if any(b <= a for a, b in zip(stamps, stamps[1:], strict=False)):
        raise DatasetError(f"{path.name}: the rows are not in time order.")
    data = np.array(values, dtype=np.float64)
    if not np.isfinite(data).all():
        raise DatasetError(f"{path.name} has missing or infinite values.")
    hour = np.array([s.hour + s.minute / 60 for s in stamps])
    weekday = np.array([s.weekday() for s in stamps], dtype=np.float64)
    calendar = np.stack([np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24),
                         np.sin(2 * np.pi * weekday / 7), np.cos(2 * np.pi * weekday / 7)], axis=1)
    return data[:, 0], data[:, 1:], calendar


class CausalBlock(nn.Module):
    """A residual block of a dilated causal convolution: each output hour sees only the
    hours before it."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.pad = 2 * dilation
        self.conv = nn.Conv1d(channels, channels, 3, dilation=dilation)
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        h = torch.relu(self.conv(nn.functional.pad(x, (self.pad, 0))))
        return x + self.mix(h)


class LoadNet(nn.Module):
    def __init__(self, features: int, channels: int, levels: int, horizon: int):
        super().__init__()
        self.horizon = horizon
        self.inp = nn.Conv1d(features, channels, 1)
        self.blocks = nn.Sequential(*(CausalBlock(channels, 2 ** i) for i in range(levels)))
        self.head = nn.Linear(channels, horizon)
        # Start as the seasonal naive forecast: the network learns the correction.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):  # x: (batch, hours, features); feature 0 is the target
        h = self.blocks(self.inp(x.transpose(1, 2)))[:, :, -1]
        same_hour_yesterday = x[:, -DAY:, 0]
        naive = same_hour_yesterday[:, torch.arange(self.horizon) % DAY]
        return naive + self.head(h)


class LoadForecaster(Task):
    metric = "mae"  # kW, on the held-out days: lower is better

    def datasets(self):
        # An uploaded CSV file is at dataset["path"]; the files of an uploaded zip are in data_dir.
        if self.dataset.get("path"):
            path = Path(self.dataset["path"])
        else:
            found = sorted(self.data_dir.rglob("*.csv")) if self.data_dir else []
            path = found[0] if found else None
        if path is None or not path.exists():
            raise DatasetError("The job has no CSV of hourly load (make_data.py writes load.csv).")
        p = self.params
        window, horizon = int(p["window_hours"]), int(p["horizon_hours"])
        load, covariates, calendar = read_series(path, str(p["target"]))
        hours = len(load)
        cut = int(hours * (1 - float(p["held_out"])))
        if cut < window + horizon or hours - cut < horizon:
            raise DatasetError(f"{hours} hours are too few for {window}-hour windows, a "
                               f"{horizon}-hour horizon and a {p['held_out']} held-out share.")
        # Standardised with the training period's statistics only.
        self.load_mean, self.load_std = float(load[:cut].mean()), float(load[:cut].std()) or 1.0
        cov_mean, cov_std = covariates[:cut].mean(0), covariates[:cut].std(0)
        cov_std[cov_std == 0] = 1.0
        series = np.concatenate([((load - self.load_mean) / self.load_std)[:, None],
                                 (covariates - cov_mean) / cov_std, calendar], axis=1)
        series = torch.tensor(series, dtype=torch.float32)
        self.features = series.shape[1]

        def windows(first: int, last: int):
            """Every forecast made at an hour in [first, last]: the window before it and the
            horizon after it."""
            origins = torch.arange(first, last + 1)
            past = torch.stack([series[o - window:o] for o in origins.tolist()])
            future = torch.stack([series[o:o + horizon, 0] for o in origins.tolist()])
            return past, future

        # Training forecasts end before the held-out period starts; held-out ones start in it.
        return windows(window, cut - horizon), windows(max(cut, window), hours - horizon)

    def build_model(self):
        p = self.params
        return LoadNet(self.features, int(p["channels"]), int(p["levels"]), int(p["horizon_hours"]))

    def loss(self, model, batch):
        past, future = batch
        return nn.functional.smooth_l1_loss(model(past), future)

    def evaluate(self, model, held_out, device):
        past, future = (t.to(device) for t in held_out)
        kw = self.load_std
        error = (model(past) - future) * kw
        naive_error = (past[:, -DAY:, 0][:, torch.arange(future.shape[1]) % DAY] - future) * kw
        mae, naive = float(error.abs().mean()), float(naive_error.abs().mean())
        return {"mae": mae, "rmse": float(error.pow(2).mean().sqrt()), "mae_naive": naive,
                # Skill over "the same hour yesterday": 0 is no better, 1 is perfect.
                "skill": 1 - mae / naive if naive > 0 else 0.0}

    # Optional: AdamW with weight decay, and a cosine schedule (a function of the step alone).
    def optimizer(self, model):
        return torch.optim.AdamW(model.parameters(), lr=float(self.params["learning_rate"]),
                                 weight_decay=float(self.params["weight_decay"]))

    def learning_rate(self, step, total_steps):
        progress = step / max(1, total_steps)
        return float(self.params["learning_rate"]) * 0.5 * (1 + math.cos(math.pi * progress))
