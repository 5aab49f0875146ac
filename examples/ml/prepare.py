"""Generate a deterministic synthetic classification dataset: Gaussian blobs, train/val/test.

Features come in mixed units (one column is ~10x the others), as raw data often does;
that is what makes a too-large learning rate unstable in train.py.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from dataset import SPLITS, write_meta, write_split

MARKER = "DONE"
SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
FEATURE_SCALES = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10.0]
BLOB_STD = 2.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=10000, help="total rows over all splits")
    parser.add_argument("--classes", type=int, default=3)
    return parser.parse_args(argv)


def blob_centers(n_classes: int, rng: random.Random) -> list[list[float]]:
    return [[rng.uniform(-3.0, 3.0) for _ in FEATURE_SCALES] for _ in range(n_classes)]


def sample_blobs(rows: int, centers: list[list[float]], rng: random.Random) -> tuple[list[list[float]], list[int]]:
    xs: list[list[float]] = []
    ys: list[int] = []
    for i in range(rows):
        label = i % len(centers)
        point = [rng.gauss(c, BLOB_STD) * s for c, s in zip(centers[label], FEATURE_SCALES, strict=True)]
        xs.append(point)
        ys.append(label)
    order = list(range(rows))
    rng.shuffle(order)
    return [xs[i] for i in order], [ys[i] for i in order]


def split_sizes(rows: int) -> dict[str, int]:
    sizes = {name: int(rows * SPLIT_FRACTIONS[name]) for name in ("val", "test")}
    sizes["train"] = rows - sizes["val"] - sizes["test"]
    return sizes


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    rng = random.Random(args.seed)
    xs, ys = sample_blobs(args.rows, blob_centers(args.classes, rng), rng)
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = split_sizes(args.rows)
    start = 0
    for split in SPLITS:
        end = start + sizes[split]
        write_split(args.out, split, xs[start:end], ys[start:end])
        start = end
    meta = {
        "name": "blobs",
        "seed": args.seed,
        "classes": args.classes,
        "features": len(FEATURE_SCALES),
        "rows": sizes,
    }
    write_meta(args.out, meta)
    (args.out / MARKER).write_text("ok\n")  # last: the marker says the dataset is complete
    print(f"wrote {args.rows} rows {sizes} to {args.out} in {time.monotonic() - started:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
