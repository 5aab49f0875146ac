"""CLI cold start: `labctl --version` and `labctl --help` against bare `python -c pass`, in the same run.

Each case is a fresh subprocess (the console script a user runs), output
discarded; cases are interleaved round by round and the median is kept, so
all three see the same machine noise. The figure that matters is the time
over bare Python: what importing labctl and Typer costs before any work.
Neither command touches the database.

    PYTHONPATH=. python bench/bench_cli.py [--quick] [--write]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    interleaved_times,
    labctl_argv,
    machine_line,
    markdown_table,
    median,
    report_section,
    run_quiet,
    text_table,
    verdict,
)

HEADING = "CLI start-up"
HELP = "import sys; sys.argv = ['labctl', '--help']; from labctl.entry import main; main()"
TARGET_MS = 150.0


def slowest_imports(argv: Sequence[str], env: dict[str, str], top: int = 8) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the slowest top-level imports, from ``-X importtime``."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], env=env, capture_output=True, text=True, check=False
    )
    found = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("   "):
            found.append((int(parts[1]), parts[2].strip()))
    return sorted(found, reverse=True)[:top]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 rounds instead of 40")
    parser.add_argument("--write", action="store_true", help=f"replace the '## {HEADING}' section of RESULTS.md")
    opts = parser.parse_args(argv)
    rounds = 10 if opts.quick else 40
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="0")
    labctl = labctl_argv()
    cases = {
        "python -c pass": lambda: run_quiet([sys.executable, "-c", "pass"], env),
        "labctl --version": lambda: run_quiet([*labctl, "--version"], env),
        "labctl --help": lambda: run_quiet([*labctl, "--help"], env),
    }
    for fn in cases.values():  # warm the page cache and the bytecode cache
        fn()
    times = interleaved_times(rounds, cases)
    ms = {name: median(ts) * 1e3 for name, ts in times.items()}
    bare = ms["python -c pass"]

    header = ("measure", "labctl", "bare python", "over bare", "ratio", "target")
    rows = []
    for name in ("labctl --version", "labctl --help"):
        over = ms[name] - bare
        target = verdict(over < TARGET_MS, f"< {TARGET_MS:.0f} ms over bare Python") if "version" in name else ""
        rows.append(
            (
                f"`{name}` wall, ms (vs `python -c pass`)",
                f"{ms[name]:.0f}",
                f"{bare:.0f}",
                f"+{over:.0f}",
                f"{ms[name] / bare:.1f}x",
                target,
            )
        )
    imports = slowest_imports(["-c", HELP], env)

    print(text_table(header, rows))
    print("\nslowest top-level imports of `labctl --help` (cumulative ms):")
    for us, module in imports:
        print(f"  {us / 1e3:7.1f}  {module}")

    body = "\n".join(
        [
            "`bench/bench_cli.py`"
            + (" --quick" if opts.quick else "")
            + f": each command a fresh subprocess (the installed console script), output discarded, "
            f"interleaved with bare `python -c pass`, median of {rounds} rounds; warm page cache.",
            "",
            f"Machine: {machine_line()}.",
            "",
            markdown_table(header, rows),
            "",
            "Slowest top-level imports behind `labctl --help` (`-X importtime`, cumulative): "
            + ", ".join(f"`{m}` {us / 1e3:.0f} ms" for us, m in imports[:5])
            + ".",
        ]
    )
    report_section(HEADING, body, write=opts.write)


if __name__ == "__main__":
    main()
