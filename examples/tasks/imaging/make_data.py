"""Writes the imaging example's data: synthetic 32×32 grayscale "scans", one folder per
class (normal/, lesion/), as binary PGM images (a plain image format any viewer opens and
the task reads with NumPy: the provider runtime has no Pillow). Generated here from a fixed
seed, nothing downloaded.

    python examples/tasks/imaging/make_data.py OUT_FOLDER [--per-class 200] [--zip scans.zip]

A scan is a bright elliptical organ with a smooth texture, a few darker vessels and sensor
noise; a lesion scan also has one small round bright spot (2 to 4 pixels across, of varying
contrast) somewhere inside the organ.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np

SIZE = 32
CLASSES = ("normal", "lesion")


def _smooth_noise(rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """Low-frequency texture: a coarse random grid, upsampled bilinearly to SIZE×SIZE."""
    grid = rng.normal(0.0, 1.0, (cells + 1, cells + 1))
    pos = np.linspace(0, cells, SIZE)
    i0 = np.minimum(pos.astype(int), cells - 1)
    f = pos - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def scan(rng: np.random.Generator, lesion: bool) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    cy, cx = SIZE / 2 + rng.uniform(-2, 2, 2)
    ry, rx = rng.uniform(10, 14, 2)
    organ = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    image = 30 + organ * (110 + 12 * _smooth_noise(rng))
    for _ in range(rng.integers(1, 4)):  # vessels: thin darker lines across the organ
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-6, 6)
        dist = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle) - offset)
        image -= organ * 25 * np.exp(-(dist ** 2) / 1.5)
    if lesion:  # one small round bright spot, inside the organ
        r = rng.uniform(1.3, 2.3)
        while True:
            ly, lx = cy + rng.uniform(-ry + 4, ry - 4), cx + rng.uniform(-rx + 4, rx - 4)
            if ((ly - cy) / ry) ** 2 + ((lx - cx) / rx) ** 2 <= 0.6:
                break
        image += rng.uniform(50, 100) * np.exp(-((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * r ** 2))
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_pgm(path: Path, image: np.ndarray) -> None:
    height, width = image.shape
    path.write_bytes(f"P5\n{width} {height}\n255\n".encode("ascii") + image.tobytes())


def generate(out: Path, per_class: int, seed: int = 11) -> int:
    rng = np.random.default_rng(seed)
    count = 0
    for label, name in enumerate(CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_pgm(folder / f"scan-{i:04d}.pgm", scan(rng, lesion=bool(label)))
            count += 1
    return count


def zip_folder(folder: Path, target: Path) -> None:
    """The class folders at the zip's root: the job's data folder is what the zip holds."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*.pgm")):
            # A fixed date: the same scans make the same zip, byte for byte (and SHA-256).
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=(2026, 1, 1, 0, 0, 0))
            z.writestr(info, path.read_bytes(), compress_type=zipfile.ZIP_DEFLATED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--zip", type=Path, help="also write a zip of the class folders here")
    args = parser.parse_args()
    count = generate(args.out, args.per_class)
    print(f"wrote {count} scans to {args.out}/{{{','.join(CLASSES)}}}/")
    if args.zip:
        zip_folder(args.out, args.zip)
        print(f"wrote {args.zip}")


if __name__ == "__main__":
    main()
