"""Checkpoint-stream layout: <stream>/epoch_NNN/{weights.json, train_metrics.json, CHECKPOINT}."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

MARKER = "CHECKPOINT"
WEIGHTS_FILE = "weights.json"
TRAIN_METRICS_FILE = "train_metrics.json"
_TRAILING_DIGITS = re.compile(r"(\d+)$")


def step_dir_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}"


def step_of(step_dir: Path) -> int | None:
    """The step labctl derives from a step directory's name (trailing digits), if it has one."""
    for name in (step_dir.name, step_dir.resolve().name):
        match = _TRAILING_DIGITS.search(name)
        if match is not None:
            return int(match.group(1))
    return None


def write_json_atomic(path: Path, value: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def find_checkpoints(root: Path, max_depth: int = 3) -> list[Path]:
    """Every step directory holding the marker under root (a step, a stream, or a dir of streams).

    Symlinks are followed: a sweep hands its points' streams over as a directory of symlinks.
    """
    found: list[Path] = []
    _collect(root, max_depth, found)
    return sorted(found)


def _collect(path: Path, depth: int, found: list[Path]) -> None:
    if (path / MARKER).is_file():
        found.append(path)
        return
    if depth == 0 or not path.is_dir():
        return
    for child in sorted(path.iterdir()):
        if child.is_dir():
            _collect(child, depth - 1, found)
