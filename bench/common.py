"""Helpers shared by the benchmarks: timing, the machine they ran on, and RESULTS.md sections."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` took (wall clock)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line(extra: str = "") -> str:
    """One line describing where a benchmark ran, for RESULTS.md."""
    parts = [
        f"{cpu_model()}, {os.cpu_count()} cores",
        f"{platform.python_implementation()} {platform.python_version()}",
    ]
    if extra:
        parts.append(extra)
    parts.append(dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
    return "; ".join(parts)


def write_section(heading: str, body: str, path: Path = RESULTS) -> None:
    """Replace the ``## heading`` section of RESULTS.md with ``body`` (append it when absent).

    Other sections (other benchmarks' results) are left exactly as they are.
    """
    title = f"## {heading}"
    section = f"{title}\n\n{body.strip()}\n"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)
