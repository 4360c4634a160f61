"""The worked example of docs/tasks.md: a pump-vibration fault classifier, a small 1-D
convolutional network of the consumer's own, trained by ComputeMesh's runtime.

The data is vibration.csv (make_data.py writes one): 64 samples a row and a `label`
column, uploaded as the job's CSV dataset or inside a zip of its data folder. The runtime
calls, in this order: datasets(), build_model(), optimizer(); then loss() for every batch
it chooses, learning_rate() before every step, and evaluate() at the end.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workers.training.task import DatasetError, Task


class VibrationNet(nn.Module):
    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(channels, channels, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(4))
        self.head = nn.Linear(channels * 4, n_classes)

    def forward(self, x):
        return self.head(self.features(x.unsqueeze(1)).flatten(1))


class VibrationFaults(Task):
    metric = "accuracy"

    def datasets(self):
        # An uploaded CSV file is at dataset["path"]; the files of an uploaded zip are in data_dir.
        if self.dataset.get("path"):
            path = Path(self.dataset["path"])
        else:
            path = (self.data_dir / "vibration.csv") if self.data_dir else None
        if path is None or not path.exists():
            raise DatasetError("The data folder has no vibration.csv (make_data.py writes one).")
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        header, body = rows[0], np.array(rows[1:], dtype=np.float32)
        if "label" not in header:
            raise DatasetError("vibration.csv has no label column.")
        i = header.index("label")
        x, y = np.delete(body, i, axis=1), body[:, i].astype(np.int64)
        # A held-out fifth, chosen by the job's seed: the same split on every node.
        order = np.random.default_rng(self.seed).permutation(len(x))
        cut = int(len(x) * 0.8)
        mean, std = x[order[:cut]].mean(), x[order[:cut]].std() or 1.0
        x = (x - mean) / std
        self.n_classes = int(y.max()) + 1
        tensors = lambda idx: (torch.tensor(x[idx]), torch.tensor(y[idx]))  # noqa: E731
        return tensors(order[:cut]), tensors(order[cut:])

    def build_model(self):
        return VibrationNet(int(self.params["channels"]), self.n_classes)

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.cross_entropy(model(x), y,
                                           label_smoothing=float(self.params["label_smoothing"]))

    def evaluate(self, model, held_out, device):
        x, y = (t.to(device) for t in held_out)
        logits = model(x)
        return {"accuracy": float((logits.argmax(1) == y).float().mean()),
                "loss": float(nn.functional.cross_entropy(logits, y))}

    # Optional: our own optimizer and a cosine schedule (a function of the step alone).
    def optimizer(self, model):
        return torch.optim.SGD(model.parameters(), lr=float(self.params["learning_rate"]),
                               momentum=0.9, nesterov=True)

    def learning_rate(self, step, total_steps):
        progress = step / max(1, total_steps)
        return float(self.params["learning_rate"]) * 0.5 * (1 + math.cos(math.pi * progress))
