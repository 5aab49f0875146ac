"""Run every benchmark, one after another (never two at once: they would time each other).

    PYTHONPATH=. python bench/run_all.py [--quick] [--write] [--only NAME ...] [--skip NAME ...]

``--quick`` and ``--write`` are passed to each script. ``bench_slurm`` runs
only when SLURM answers (``sinfo``); start it with ``bash scripts/slurm-up.sh``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "bench_cli",
    "bench_status",
    "bench_eventstore",
    "bench_hashing",
    "bench_slurm",
    "bench_pipelines",
    "bench_throughput",
    "bench_metrics",
    "bench_fingerprints",
    "bench_import",
    "bench_web",
    "bench_scale",
]


def slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--only", nargs="*", default=None, choices=SCRIPTS)
    parser.add_argument("--skip", nargs="*", default=[], choices=SCRIPTS)
    opts = parser.parse_args()
    failed = []
    for name in opts.only or SCRIPTS:
        if name in opts.skip:
            continue
        if name == "bench_slurm" and not slurm_answers():
            print(f"== {name}: skipped (no SLURM; bash scripts/slurm-up.sh)", flush=True)
            continue
        argv = [sys.executable, str(HERE / f"{name}.py")]
        argv += ["--quick"] * opts.quick + ["--write"] * opts.write
        print(f"== {name}: {' '.join(argv[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(argv, cwd=HERE.parent).returncode
        print(f"== {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
