"""The templates' networks and their evaluation metrics."""

from __future__ import annotations

import torch
from torch import nn

from .data import Splits


class MLP(nn.Module):
    def __init__(self, n_in: int, n_out: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        blocks: list[nn.Module] = []
        width = n_in
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*blocks)

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels * 2, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(channels * 2 * 4, n_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class LoadForecaster(nn.Module):
    def __init__(self, n_features: int, hidden: int, horizon: int):
        super().__init__()
        self.rnn = nn.GRU(n_features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.head(h[-1])


def build(template: str, params: dict, data: Splits) -> tuple[nn.Module, nn.Module]:
    """The network and its loss for a template."""
    if template == "tabular-classifier":
        model = MLP(data.x_train.shape[1], data.n_classes, int(params["hidden_units"]),
                    int(params["hidden_layers"]), float(params["dropout"]))
        return model, nn.CrossEntropyLoss()
    if template == "image-classifier":
        return SmallCNN(int(params["channels"]), data.n_classes), nn.CrossEntropyLoss()
    if template == "load-forecast":
        forecaster = LoadForecaster(data.x_train.shape[2], int(params["hidden_size"]),
                                    int(params["horizon_hours"]))
        return forecaster, nn.MSELoss()
    raise ValueError(f"unknown template {template}")


@torch.no_grad()
def evaluate(template: str, model: nn.Module, data: Splits, device) -> tuple[str, float]:
    """The template's held-out metric: accuracy for classifiers, MAPE (%) for forecasts."""
    model.eval()
    x, y = data.x_test.to(device), data.y_test.to(device)
    out = torch.cat([model(x[i:i + 1024]) for i in range(0, len(x), 1024)])
    model.train()
    if template == "load-forecast":
        pred = out * data.target_scale + data.target_offset
        true = y * data.target_scale + data.target_offset
        return "mape", float((100 * ((pred - true).abs() / true.abs().clamp_min(1e-6))).mean())
    return "accuracy", float((out.argmax(dim=1) == y).float().mean())


@torch.no_grad()
def eval_loss(model: nn.Module, loss_fn: nn.Module, data: Splits, device) -> float:
    """The training loss on the held-out split (benchmarks compare runs by it)."""
    model.eval()
    x, y = data.x_test.to(device), data.y_test.to(device)
    total = sum(float(loss_fn(model(x[i:i + 1024]), y[i:i + 1024])) * len(x[i:i + 1024])
                for i in range(0, len(x), 1024))
    model.train()
    return total / max(1, len(x))
