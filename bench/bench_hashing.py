"""How close `labctl hash-outputs` gets to the disk: its rate vs. one thread sha256-ing the same files.

Builds a ~512 MB output (4 large files + 2,000 small ones) in a temp dir, then
times, per round, a plain sequential read+sha256 of every file and
hash_outputs() on a run whose context declares that output. Cold numbers
(page cache dropped before each timing) need root; warm numbers are always
taken. Prints the rates, the ratio and a snippet for bench/RESULTS.md.

    PYTHONPATH=. python bench/bench_hashing.py [--rounds 3] [--dir /tmp] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_line, report_section

from labctl.artifacts.context import ContextOutput, RunContext, write_context
from labctl.artifacts.outputs import hash_outputs

LARGE_FILES = 4
LARGE_SIZE = 112 << 20
SMALL_FILES = 2000
SMALL_SIZE = 32 << 10
CHUNK = 1 << 20


def build_tree(out: Path) -> int:
    """Random bytes (nothing compressible); returns the total size."""
    for i in range(LARGE_FILES):
        with open(out / f"shard-{i}.bin", "wb") as f:
            for _ in range(LARGE_SIZE // (4 << 20)):
                f.write(os.urandom(4 << 20))
    for i in range(SMALL_FILES):
        sub = out / "small" / f"{i % 20:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"part-{i:04d}.json").write_bytes(os.urandom(SMALL_SIZE))
    (out / "done.txt").write_text("ok\n")
    return LARGE_FILES * LARGE_SIZE + SMALL_FILES * SMALL_SIZE + 3


def raw_sequential_sha256(out: Path) -> None:
    """The baseline: one thread reads every file in 1 MiB chunks and sha256es it."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    for dirpath, _, names in os.walk(out):
        for name in sorted(names):
            digest = hashlib.sha256()
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    digest.update(view[:n])
            digest.hexdigest()


def drop_page_cache() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to build the tree (default: $TMPDIR)")
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--write", action="store_true", help="replace the '## Hashing' section of bench/RESULTS.md")
    opts = parser.parse_args()
    if opts.quick:
        opts.rounds = 1

    base = Path(tempfile.mkdtemp(prefix="labctl-bench-hash-", dir=opts.dir))
    try:
        run_dir, out = base / "run", base / "out" / "alice" / "prep_run_bench"
        out.mkdir(parents=True)
        total = build_tree(out)
        write_context(
            run_dir,
            RunContext(
                run_id="run_bench",
                run_dir=str(run_dir),
                user="alice",
                recipe_name="prep",
                outputs={"data": ContextOutput(type="dataset", path=str(out), marker="done.txt")},
            ),
        )
        cases: dict[str, Callable[[], object]] = {
            "raw": lambda: raw_sequential_sha256(out),
            "hash-outputs": lambda: hash_outputs(run_dir),
        }
        cold = drop_page_cache()
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(opts.rounds):
            for name, fn in cases.items():
                if cold:
                    drop_page_cache()
                    times.setdefault(("cold", name), []).append(timed(fn))
                fn()  # warm the page cache
                times.setdefault(("warm", name), []).append(timed(fn))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    mb = total / 1e6
    rate = {key: mb / statistics.median(ts) for key, ts in times.items()}
    print(f"tree: {mb:.0f} MB ({LARGE_FILES} x {LARGE_SIZE >> 20} MiB + {SMALL_FILES} x 32 KiB)")
    print(f"cpus: {os.cpu_count()}, rounds: {opts.rounds}, cold cache: {'yes' if cold else 'no'}")
    rows = []
    for cache in ("cold", "warm"):
        if (cache, "raw") not in rate:
            continue
        raw, ours = rate[(cache, "raw")], rate[(cache, "hash-outputs")]
        print(f"{cache}: raw {raw:.0f} MB/s, hash-outputs {ours:.0f} MB/s, ratio {ours / raw:.0%}")
        rows.append(f"| {cache} | {raw:.0f} | {ours:.0f} | {ours / raw:.0%} |")
    body = "\n".join(
        [
            "`bench/bench_hashing.py`"
            + (" --quick" if opts.quick else "")
            + f": `hash_outputs()` of a {mb:.0f} MB output ({LARGE_FILES} large files + {SMALL_FILES} small) "
            f"vs. one thread reading and sha256-ing the same files in 1 MiB chunks, median of {opts.rounds} "
            "interleaved rounds" + ("" if cold else "; page cache warm only (dropping it needs root)") + ".",
            "",
            f"Machine: {machine_line()}.",
            "",
            "| page cache | raw 1-thread MB/s | hash-outputs MB/s | ratio |",
            "|---|---:|---:|---:|",
            *rows,
        ]
    )
    print()
    report_section("Hashing", body, write=opts.write)


if __name__ == "__main__":
    main()
