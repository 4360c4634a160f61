"""Writes the worked example's dataset: vibration.csv, 2,000 generated accelerometer windows
of 64 samples from a pump, each labelled healthy (0), imbalance (1) or bearing fault (2).
Generated here from a fixed seed, nothing downloaded.

    python examples/tasks/vibration/make_data.py OUT_FOLDER [--windows 2000]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

SAMPLES = 64


def windows(count: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(SAMPLES) / SAMPLES
    labels = rng.integers(0, 3, count)
    x = np.empty((count, SAMPLES))
    for i, label in enumerate(labels):
        speed = rng.uniform(3, 5)  # shaft turns per window
        signal = np.sin(2 * np.pi * speed * t + rng.uniform(0, 2 * np.pi))
        if label == 1:  # imbalance: a strong component at the shaft speed
            signal *= 2.5
        elif label == 2:  # bearing fault: short impacts at a higher rate
            signal += 3.0 * (np.sin(2 * np.pi * 7.3 * speed * t) > 0.97)
        x[i] = signal + rng.normal(0, 0.6, SAMPLES)
    return x.astype(np.float32), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--windows", type=int, default=2000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    x, y = windows(args.windows)
    with open(args.out / "vibration.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([f"s{i}" for i in range(SAMPLES)] + ["label"])
        for row, label in zip(x, y, strict=True):
            writer.writerow([f"{v:.5f}" for v in row] + [int(label)])
    print(f"wrote {len(x)} windows to {args.out / 'vibration.csv'}")


if __name__ == "__main__":
    main()
