"""The blob dataset on disk: one CSV per split (features..., label) and meta.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"


def split_path(data_dir: Path, split: str) -> Path:
    return data_dir / f"{split}.csv"


def write_split(data_dir: Path, split: str, xs: list[list[float]], ys: list[int]) -> None:
    n_features = len(xs[0])
    with split_path(data_dir, split).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"x{i}" for i in range(n_features)] + ["label"])
        for x, y in zip(xs, ys, strict=True):
            writer.writerow([f"{v:.6f}" for v in x] + [y])


def read_split(data_dir: Path, split: str) -> tuple[list[list[float]], list[int]]:
    xs: list[list[float]] = []
    ys: list[int] = []
    with split_path(data_dir, split).open(newline="") as f:
        reader = csv.reader(f)
        next(reader)  # header
        for row in reader:
            xs.append([float(v) for v in row[:-1]])
            ys.append(int(row[-1]))
    return xs, ys


def write_meta(data_dir: Path, meta: dict) -> None:
    (data_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(data_dir: Path) -> dict:
    return json.loads((data_dir / META_FILE).read_text())
