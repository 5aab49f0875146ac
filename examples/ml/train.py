"""Train a softmax classifier with SGD, writing one checkpoint per epoch.

Give the learning rate directly (--lr) or as an index into a grid (--lr_grid, --lr_index):
a labctl sweep varies an integer [args] key, so the grid maps that index to a rate.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from checkpoints import MARKER, TRAIN_METRICS_FILE, WEIGHTS_FILE, step_dir_name, write_json_atomic
from dataset import read_meta, read_split
from model import evaluate, init_weights, sgd_epoch

try:  # labctl.log appends to $LABCTL_RUN_DIR/.lab/metrics.jsonl; labctl ingests it (no database needed here)
    from labctl import log as log_metrics
except ImportError:  # run by a Python without labctl: train all the same, without logged metrics

    def log_metrics(step: int | None = None, **values: float) -> None:
        return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="dataset directory (prepare.py)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint stream directory")
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--lr_grid", "--lr-grid", help="comma-separated learning rates")
    parser.add_argument("--lr_index", "--lr-index", type=int, help="index into --lr_grid")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.lr = resolve_lr(parser, args)
    return args


def resolve_lr(parser: argparse.ArgumentParser, args: argparse.Namespace) -> float:
    if args.lr is not None:
        if args.lr_index is not None:
            parser.error("give either --lr or --lr_index, not both")
        return args.lr
    if args.lr_grid is None or args.lr_index is None:
        parser.error("give --lr, or --lr_grid with --lr_index")
    grid = [float(v) for v in args.lr_grid.split(",")]
    if not 0 <= args.lr_index < len(grid):
        parser.error(f"--lr_index={args.lr_index} is outside the {len(grid)}-entry --lr_grid {grid}")
    return grid[args.lr_index]


def write_checkpoint(out: Path, epoch: int, weights: dict, info: dict, metrics: dict) -> Path:
    step_dir = out / step_dir_name(epoch)
    step_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(step_dir / WEIGHTS_FILE, {**info, "epoch": epoch, **weights})
    write_json_atomic(step_dir / TRAIN_METRICS_FILE, metrics)
    # Last: labctl (and evald) treat a step as a checkpoint only once the marker exists.
    (step_dir / MARKER).write_text("ok\n")
    return step_dir


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    meta = read_meta(args.data)
    xs, ys = read_split(args.data, "train")
    val_xs, val_ys = read_split(args.data, "val")
    rng = random.Random(args.seed)
    weights = init_weights(meta["features"], meta["classes"], rng)
    info = {"lr": args.lr, "lr_index": args.lr_index, "seed": args.seed, "classes": meta["classes"]}
    print(f"training lr={args.lr:g} on {len(xs)} rows for {args.epochs} epochs", flush=True)
    for epoch in range(1, args.epochs + 1):
        started = time.monotonic()
        loss, accuracy = sgd_epoch(weights, xs, ys, args.lr, rng)
        seconds = time.monotonic() - started
        val_loss, val_accuracy = evaluate(weights, val_xs, val_ys)
        metrics = {"epoch": epoch, "lr": args.lr, "train_loss": loss, "train_accuracy": accuracy}
        step_dir = write_checkpoint(args.out, epoch, weights, info, metrics)
        log_metrics(
            step=epoch,
            train_loss=loss,
            train_accuracy=accuracy,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            epoch_seconds=seconds,
        )
        print(
            f"epoch {epoch}/{args.epochs} lr={args.lr:g} loss={loss:.4f} "
            f"acc={accuracy:.3f} val_acc={val_accuracy:.3f} ({seconds:.2f}s) -> {step_dir.name}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
