"""The fine-tune example of docs/tasks.md: a turbine-sensor fault classifier pretrained on
one wind farm's readings (pretrain.py, on your machine) and fine-tuned on ComputeMesh for
another farm, starting from the uploaded weights.

The task makes its own data (a job with no dataset): 16 sensor channels per reading, four
classes (healthy, blade icing, yaw misalignment, gearbox wear) given by a teacher rule that
is shared by every farm, shifted a little per farm (`farm`). Everything is a function of
the params, so every rank, and the verifier's replay, builds the same data.

With `weights` on the job, the runtime loads the uploaded state_dict into build_model()'s
network before step 0 on every rank (strict: the same tensor names and shapes). The task
needs no code for it.
"""

from __future__ import annotations

import torch
from torch import nn

from workers.training.task import Task

CHANNELS, CLASSES = 16, 4


class SensorNet(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(CHANNELS, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, x):
        return self.head(self.body(x))


def farm_readings(farm: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n readings of farm `farm`: the shared teacher, shifted by the farm's own offsets."""
    teacher = torch.randn(CLASSES, CHANNELS, generator=torch.Generator().manual_seed(1234))
    shift = torch.randn(CLASSES, CHANNELS, generator=torch.Generator().manual_seed(5000 + farm))
    rule = teacher + 0.25 * shift
    x = torch.randn(n, CHANNELS, generator=torch.Generator().manual_seed(seed * 1009 + farm))
    return x, (x @ rule.T).argmax(1)


class TurbineFaults(Task):
    metric = "accuracy"

    def datasets(self):
        x, y = farm_readings(int(self.params["farm"]), int(self.params["samples"]), self.seed)
        cut = int(len(x) * 0.8)
        return (x[:cut], y[:cut]), (x[cut:], y[cut:])

    def build_model(self):
        return SensorNet(int(self.params["hidden"]))

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def evaluate(self, model, held_out, device):
        x, y = (t.to(device) for t in held_out)
        logits = model(x)
        return {"accuracy": float((logits.argmax(1) == y).float().mean()),
                "loss": float(nn.functional.cross_entropy(logits, y))}
