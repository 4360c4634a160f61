"""An imaging classifier for a healthcare start-up: a small convolutional network of the
consumer's own that tells a normal scan from one with a lesion, trained by ComputeMesh's
runtime on a zip of class folders of images.

The data is the job's data folder, as the uploaded zip holds it: one folder per class
(`normal/`, `lesion/`, or any names: the classes are the folders, in sorted order), each of
grayscale images of one size, as binary PGM (`.pgm`) or NumPy arrays (`.npy`). make_data.py
writes such a folder of synthetic scans. The provider runtime has no Pillow: PGM is read
with NumPy here (a header and the raw bytes).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workers.training.task import DatasetError, Task

SUFFIXES = (".pgm", ".npy")


def read_pgm(path: Path) -> np.ndarray:
    """A binary 8- or 16-bit PGM (P5) as a 2-D array: the header is four whitespace-separated
    fields (P5, width, height, maxval), with optional # comments, then the raster."""
    raw = path.read_bytes()
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while pos < len(raw) and raw[pos:pos + 1].isspace():
            pos += 1
        if raw[pos:pos + 1] == b"#":  # a comment runs to the end of its line
            pos = raw.find(b"\n", pos) + 1 or len(raw)
            continue
        start = pos
        while pos < len(raw) and not raw[pos:pos + 1].isspace():
            pos += 1
        if start == pos:
            break
        fields.append(raw[start:pos])
    try:
        magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    except (IndexError, ValueError):
        raise DatasetError(f"{path.name} is not a binary PGM image (no P5 header).") from None
    if magic != b"P5" or not (0 < maxval < 65536) or width < 1 or height < 1:
        raise DatasetError(f"{path.name} is not a binary (P5) PGM image.")
    dtype = np.dtype(np.uint8) if maxval < 256 else np.dtype(">u2")
    body = raw[pos + 1:pos + 1 + width * height * dtype.itemsize]
    if len(body) != width * height * dtype.itemsize:
        raise DatasetError(f"{path.name} is truncated.")
    return np.frombuffer(body, dtype=dtype).reshape(height, width).astype(np.float32) / maxval


def read_image(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".pgm":
        return read_pgm(path)
    image = np.load(path, allow_pickle=False)  # never unpickle another party's data
    if image.ndim != 2:
        raise DatasetError(f"{path.name} is not a 2-D grayscale array (shape {image.shape}).")
    return image.astype(np.float32)


def class_root(data_dir: Path) -> Path:
    """The folder whose sub-folders are the classes: the data folder itself, or its one
    sub-folder when the zip held a single top folder (scans/normal/…)."""
    entries = [p for p in data_dir.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and not any(
            p.suffix.lower() in SUFFIXES for p in entries[0].iterdir()):
        return entries[0]
    return data_dir


class ScanNet(nn.Module):
    """Two convolution blocks and a linear head. No batch norm: each rank would keep its
    own running statistics, and a replay (one process playing every rank) could not."""

    def __init__(self, channels: int, n_classes: int, dropout: float):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * channels, 2 * channels, 3, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(2 * channels * 4, n_classes))

    def forward(self, x):
        return self.head(self.features(x))


class LesionClassifier(Task):
    metric = "accuracy"

    def datasets(self):
        if self.data_dir is None or not self.data_dir.is_dir():
            raise DatasetError("This task reads a zip of class folders of images; the job has "
                               "no data folder (upload the zip as the job's dataset).")
        root = class_root(self.data_dir)
        images, labels = [], []
        self.classes: list[str] = []  # the class folders that hold images, sorted
        for folder in sorted(p for p in root.iterdir()
                             if p.is_dir() and not p.name.startswith((".", "__MACOSX"))):
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
            if files:
                images += [read_image(path) for path in files]
                labels += [len(self.classes)] * len(files)
                self.classes.append(folder.name)
        if len(self.classes) < 2:
            raise DatasetError("The data folder needs at least two class folders of .pgm or "
                               f".npy images (found: {', '.join(self.classes) or 'none'}).")
        if len({im.shape for im in images}) != 1:
            raise DatasetError("The images are not all the same size: "
                               f"{sorted({im.shape for im in images})[:4]}.")
        x = torch.tensor(np.stack(images)).unsqueeze(1)
        y = torch.tensor(labels, dtype=torch.int64)
        # A held-out share chosen by the job's seed: the same split on every node.
        order = torch.tensor(np.random.default_rng(self.seed).permutation(len(x)))
        cut = int(len(x) * (1 - float(self.params["held_out"])))
        train, held = order[:cut], order[cut:]
        mean, std = float(x[train].mean()), float(x[train].std()) or 1.0
        x = (x - mean) / std
        self.n_classes = len(self.classes)
        return (x[train], y[train]), (x[held], y[held])

    def build_model(self):
        return ScanNet(int(self.params["channels"]), self.n_classes, float(self.params["dropout"]))

    def batch(self, data, indices):
        x, y = data[0][indices], data[1][indices]
        if self.params["augment"]:
            # Random flips, drawn from torch's generator: the runtime seeds it by
            # (seed, rank, step) before every step, so a replay draws the same flips.
            flip_h = torch.rand(len(x)) < 0.5
            flip_v = torch.rand(len(x)) < 0.5
            x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
            x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
        return x, y

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def evaluate(self, model, held_out, device):
        x, y = (t.to(device) for t in held_out)
        logits = model(x)
        predicted = logits.argmax(1)
        out = {"accuracy": float((predicted == y).float().mean()),
               "loss": float(nn.functional.cross_entropy(logits, y))}
        if "lesion" in self.classes:
            lesion = self.classes.index("lesion")
            positive, negative = y == lesion, y != lesion
            if positive.any() and negative.any():
                # Sensitivity: lesions found; specificity: other scans left alone.
                out["sensitivity"] = float((predicted[positive] == lesion).float().mean())
                out["specificity"] = float((predicted[negative] != lesion).float().mean())
        return out

    def learning_rate(self, step, total_steps):
        # A short linear warm-up, then cosine decay: a function of the step alone.
        base = float(self.params["learning_rate"])
        warmup = max(1, total_steps // 20)
        if step < warmup:
            return base * (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return base * 0.5 * (1 + math.cos(math.pi * progress))
