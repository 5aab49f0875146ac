"""Evaluate one checkpoint on the validation split; writes <out>/metrics.json (the eval_result marker)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from checkpoints import MARKER, WEIGHTS_FILE, read_json, step_of, write_json_atomic
from dataset import read_split
from model import evaluate

METRICS_FILE = "metrics.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a step dir, e.g. epoch_003")
    parser.add_argument("--data", type=Path, required=True, help="dataset directory (prepare.py)")
    parser.add_argument("--out", type=Path, required=True, help="eval_result output directory")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    return parser.parse_args(argv)


def checkpoint_metrics(checkpoint: Path, data: Path, split: str) -> dict:
    """The eval_result record for one checkpoint; report.py uses the same function."""
    if not (checkpoint / MARKER).is_file():
        raise SystemExit(f"{checkpoint}: no {MARKER} marker, not a finished checkpoint")
    weights = read_json(checkpoint / WEIGHTS_FILE)
    xs, ys = read_split(data, split)
    loss, accuracy = evaluate(weights, xs, ys)
    step = step_of(checkpoint)
    return {
        "step": weights["epoch"] if step is None else step,
        "accuracy": accuracy,
        "loss": loss,
        "split": split,
        "examples": len(ys),
        "lr": weights["lr"],
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    metrics = checkpoint_metrics(args.checkpoint, args.data, args.split)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / METRICS_FILE, metrics)
    print(
        f"step {metrics['step']} lr={metrics['lr']:g}: {args.split} "
        f"accuracy={metrics['accuracy']:.4f} loss={metrics['loss']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
