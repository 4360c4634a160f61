"""Writes the forecaster example's data: load.csv, the hourly electrical load of a
(synthetic) commercial site with the outdoor temperature, one row an hour:

    timestamp,load_kw,temperature_c
    2026-01-01T00:00:00,412.3,-1.8

The load follows the working day and week, heats below 15 °C and cools above 22 °C, with
noise that persists for hours; the temperature follows the season and the day. Generated
here from a fixed seed, nothing downloaded.

    python examples/tasks/forecaster/make_data.py OUT_FOLDER [--days 120] [--start 2026-01-01]
"""

from __future__ import annotations

import argparse
import csv
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np


def series(days: int, start: datetime, seed: int = 5) -> tuple[list[datetime], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hours = days * 24
    stamps = [start + timedelta(hours=h) for h in range(hours)]
    t = np.arange(hours, dtype=np.float64)
    hour = t % 24
    weekday = np.array([s.weekday() for s in stamps])
    day_of_year = np.array([s.timetuple().tm_yday for s in stamps], dtype=np.float64)

    # Temperature: the season (coldest mid-January), the day (warmest at 15:00) and weather
    # fronts (a slow random walk pulled back to zero).
    weather = np.zeros(hours)
    for i in range(1, hours):
        weather[i] = 0.995 * weather[i - 1] + rng.normal(0, 0.35)
    temperature = (10 - 12 * np.cos(2 * np.pi * (day_of_year - 15) / 365)
                   + 4 * np.cos(2 * np.pi * (hour - 15) / 24) + weather)

    # Load: a base, the working day (08:00 to 19:00 on weekdays, a little on Saturdays),
    # heating and cooling, and noise that persists.
    working = ((hour >= 8) & (hour < 19)).astype(np.float64)
    ramp = np.clip(np.minimum(hour - 6, 21 - hour) / 2, 0, 1)  # staff in from 06:00, out by 21:00
    occupancy = np.where(weekday < 5, np.maximum(working, ramp), np.where(weekday == 5, 0.3 * working, 0))
    heating = 9.0 * np.clip(15 - temperature, 0, None)
    cooling = 14.0 * np.clip(temperature - 22, 0, None) * (0.4 + 0.6 * occupancy)
    noise = np.zeros(hours)
    for i in range(1, hours):
        noise[i] = 0.8 * noise[i - 1] + rng.normal(0, 9)
    load = 180 + 320 * occupancy + heating + cooling + noise
    return stamps, load, temperature


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--start", default="2026-01-01", help="first day (YYYY-MM-DD)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stamps, load, temperature = series(args.days, datetime.fromisoformat(args.start))
    with open(args.out / "load.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timestamp", "load_kw", "temperature_c"])
        for s, kw, c in zip(stamps, load, temperature, strict=True):
            writer.writerow([s.isoformat(), f"{kw:.1f}", f"{c:.1f}"])
    print(f"wrote {len(stamps)} hours to {args.out / 'load.csv'}")


if __name__ == "__main__":
    main()
