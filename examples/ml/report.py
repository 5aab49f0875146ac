"""Compare every checkpoint of a learning-rate sweep on the validation split and report the best.

--ckpts takes a checkpoint stream, a directory of streams (how a sweep stage hands its points
to the next stage: symlinks named 0, 1, ...), or a single step; repeat it to combine several.
Writes report.md, evaluations.json and, last, best.json (the output's marker).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from checkpoints import WEIGHTS_FILE, find_checkpoints, read_json, write_json_atomic
from dataset import read_meta
from evaluate import checkpoint_metrics

BEST_FILE = "best.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpts", type=Path, action="append", required=True, help="repeatable")
    parser.add_argument("--data", type=Path, required=True, help="dataset directory (prepare.py)")
    parser.add_argument("--out", type=Path, required=True, help="report output directory")
    return parser.parse_args(argv)


def evaluate_all(roots: list[Path], data: Path) -> list[dict]:
    rows = []
    for root in roots:
        checkpoints = find_checkpoints(root)
        if not checkpoints:
            raise SystemExit(f"{root}: no checkpoints (step dirs with a CHECKPOINT marker) found")
        for checkpoint in checkpoints:
            metrics = checkpoint_metrics(checkpoint, data, "val")
            lr_index = read_json(checkpoint / WEIGHTS_FILE)["lr_index"]
            row = {**metrics, "lr_index": lr_index, "checkpoint": str(checkpoint.resolve())}
            rows.append(row)
    return sorted(rows, key=lambda r: (r["lr"], r["step"]))


def pick_best(rows: list[dict]) -> dict:
    """Highest validation accuracy; ties go to the lower validation loss."""
    return max(rows, key=lambda r: (r["accuracy"], -r["loss"]))


def best_per_lr(rows: list[dict]) -> list[dict]:
    by_lr: dict[float, list[dict]] = {}
    for row in rows:
        by_lr.setdefault(row["lr"], []).append(row)
    return [pick_best(group) for _, group in sorted(by_lr.items())]


def render_report(rows: list[dict], best: dict, meta: dict) -> str:
    sizes = meta["rows"]
    lines = [
        "# Learning-rate sweep report",
        "",
        f"Dataset `{meta['name']}` (seed {meta['seed']}): {meta['classes']} classes, "
        f"{meta['features']} features; {sizes['train']} train / {sizes['val']} val / "
        f"{sizes['test']} test rows.",
        "",
        f"**Best: lr={best['lr']:g} at epoch {best['step']}: val accuracy "
        f"{best['accuracy']:.4f}, test accuracy {best['test_accuracy']:.4f}.**",
        "",
        "## Best epoch per learning rate (validation)",
        "",
        "| lr | epoch | accuracy | loss |",
        "|---:|---:|---:|---:|",
    ]
    lines += [_table_row(row) for row in best_per_lr(rows)]
    lines += ["", "## Every checkpoint (validation)", "", "| lr | epoch | accuracy | loss |"]
    lines += ["|---:|---:|---:|---:|"] + [_table_row(row) for row in rows]
    return "\n".join(lines) + "\n"


def _table_row(row: dict) -> str:
    return f"| {row['lr']:g} | {row['step']} | {row['accuracy']:.4f} | {row['loss']:.4f} |"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rows = evaluate_all(args.ckpts, args.data)
    best = pick_best(rows)
    test = checkpoint_metrics(Path(best["checkpoint"]), args.data, "test")
    summary = {
        "lr": best["lr"],
        "lr_index": best["lr_index"],
        "epoch": best["step"],
        "val_accuracy": best["accuracy"],
        "val_loss": best["loss"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "checkpoint": best["checkpoint"],
        "checkpoints_compared": len(rows),
    }
    report = render_report(rows, {**best, "test_accuracy": test["accuracy"]}, read_meta(args.data))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(report)
    write_json_atomic(args.out / "evaluations.json", rows)
    write_json_atomic(args.out / BEST_FILE, summary)  # last: the output's marker
    print(
        f"best of {len(rows)} checkpoints: lr={best['lr']:g} epoch {best['step']} "
        f"val_accuracy={best['accuracy']:.4f} test_accuracy={test['accuracy']:.4f} "
        f"(report: {args.out / 'report.md'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
