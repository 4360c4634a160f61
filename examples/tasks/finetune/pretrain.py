"""Pretrain the example's network on farm 0's readings, on your machine, and save its
state_dict: the weights file a fine-tune on ComputeMesh starts from.

    PYTHONPATH=. python examples/tasks/finetune/pretrain.py weights.pt [--farm 0] [--epochs 10]

It builds the network with the task's own build_model(), so the tensor names and shapes are
the ones the platform checks the file against. Only the state_dict is saved (tensors: what
torch.load(..., weights_only=True) reads); never the model object.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from task import TurbineFaults  # noqa: E402

from workers.training.task import TaskContext  # noqa: E402


def pretrain(out: Path, *, farm: int = 0, epochs: int = 10, samples: int = 8000, hidden: int = 64,
             seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    task = TurbineFaults(TaskContext(params={"farm": farm, "samples": samples, "hidden": hidden,
                                             "seed": seed}))
    (x, y), held_out = task.datasets()
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, held_out, torch.device("cpu"))
    torch.save(model.state_dict(), out)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--farm", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=8000)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    metrics = pretrain(args.out, farm=args.farm, epochs=args.epochs, samples=args.samples,
                       hidden=args.hidden)
    print(f"pretrained on farm {args.farm}: held-out accuracy {metrics['accuracy']:.3f}, "
          f"loss {metrics['loss']:.3f}; state_dict saved to {args.out}")


if __name__ == "__main__":
    main()
