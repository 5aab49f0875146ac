"""Logging metrics from a job: JSON lines appended to ``$LABCTL_RUN_DIR/.lab/metrics.jsonl``.

A job needs no database (compute nodes have none): ``labctl.log(step=3, loss=0.2)``
in Python, or ``labctl log-metric --step 3 loss=0.2`` in a shell, appends one line
``{"step": 3, "_time": 1764590000.123, "loss": 0.2}``. The agent (or the SLURM
reconcile) ingests the file into the log while the run is live and when it ends.

This module is imported by ``import labctl``: standard library only, nothing else.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

METRICS_FILE = Path(".lab") / "metrics.jsonl"
STEP_KEY = "step"
TIME_KEY = "_time"


def metrics_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / METRICS_FILE


def encode_value(name: str, value: Any) -> float | str:
    """A metric value as written: a float, or ``"nan"``/``"inf"``/``"-inf"`` (JSON has no such numbers)."""
    if isinstance(value, bool | str | bytes) or value is None:
        raise TypeError(f"metric {name!r}: {value!r} is not a number")
    try:
        number = float(value)  # ints, floats, numpy scalars, one-element tensors
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metric {name!r}: {value!r} is not a number") from exc
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return number


def format_line(step: int, values: Mapping[str, Any], at: float | None = None) -> bytes:
    """One line of the metrics file."""
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"step must be an integer, not {step!r}")
    if not values:
        raise ValueError("log at least one metric, e.g. log(step=1, loss=0.5)")
    record: dict[str, Any] = {STEP_KEY: step, TIME_KEY: round(time.time() if at is None else at, 6)}
    for name, value in values.items():
        if name in (STEP_KEY, TIME_KEY) or not name:
            raise ValueError(f"{name!r} cannot be a metric name")
        record[name] = encode_value(name, value)
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


class MetricsWriter:
    """Appends lines to one metrics file; each line is one ``write`` on an O_APPEND descriptor."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.last_step = -1

    def log(self, step: int | None = None, **values: Any) -> int:
        """Append one line; without ``step`` the previous step + 1 (from 0). Returns the step."""
        if step is None:
            step = self.last_step + 1
        line = format_line(step, values)
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self._fd, line)
        self.last_step = step
        return step

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_writer: MetricsWriter | None = None
_warned = False


def log(step: int | None = None, **values: Any) -> int | None:
    """Log metrics of the current labctl run: ``labctl.log(step=epoch, loss=0.31, val_accuracy=0.92)``.

    Outside a labctl run (no ``LABCTL_RUN_DIR``) it does nothing and says so once on stderr,
    so the same script runs by hand. Returns the step logged (None outside a run).
    """
    global _writer, _warned
    if _writer is None:
        run_dir = os.environ.get("LABCTL_RUN_DIR")
        if not run_dir:
            if not _warned:
                _warned = True
                print(
                    "labctl.log: not inside a labctl run (LABCTL_RUN_DIR is unset); metrics not kept", file=sys.stderr
                )
            format_line(0 if step is None else step, values)  # still refuse what a run would refuse
            return None
        _writer = MetricsWriter(metrics_path(run_dir))
    return _writer.log(step, **values)


def log_metric_main(argv: Sequence[str]) -> int:
    """``labctl log-metric [--step N] [--run-dir DIR] NAME=VALUE...`` without loading the CLI."""
    step: int | None = None
    run_dir = os.environ.get("LABCTL_RUN_DIR")
    pairs: list[str] = []
    args = list(argv)
    usage = "usage: labctl log-metric [--step N] [--run-dir DIR] NAME=VALUE [NAME=VALUE ...]"
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(usage + "\nAppends one line to $LABCTL_RUN_DIR/.lab/metrics.jsonl (step: the last one + 1).")
            return 0
        if arg in ("--step", "--run-dir") or arg.startswith(("--step=", "--run-dir=")):
            name, _, value = arg.partition("=")
            if not value:
                if not args:
                    return _usage_error(f"{name} needs a value", usage)
                value = args.pop(0)
            if name == "--step":
                try:
                    step = int(value)
                except ValueError:
                    return _usage_error(f"--step {value!r}: not an integer", usage)
            else:
                run_dir = value
        elif arg.startswith("-") and "=" not in arg:
            return _usage_error(f"unknown option {arg}", usage)
        else:
            pairs.append(arg)
    if not run_dir:
        return _usage_error("not inside a labctl run: LABCTL_RUN_DIR is unset (or pass --run-dir)", usage)
    values: dict[str, float] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            return _usage_error(f"{pair!r}: expected NAME=VALUE", usage)
        try:
            values[name] = float(raw)
        except ValueError:
            return _usage_error(f"{pair!r}: {raw!r} is not a number", usage)
    path = metrics_path(run_dir)
    if step is None:
        step = last_step(path) + 1
    try:
        MetricsWriter(path).log(step, **values)
    except (TypeError, ValueError, OSError) as exc:
        return _usage_error(str(exc), usage)
    return 0


def last_step(path: Path) -> int:
    """The step of the file's last complete line (-1 when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read().splitlines()
    except FileNotFoundError:
        return -1
    for line in reversed(tail):
        try:
            step = json.loads(line).get(STEP_KEY)
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return -1


def _usage_error(message: str, usage: str) -> int:
    print(f"labctl: error: {message}\n{usage}", file=sys.stderr)
    return 2
