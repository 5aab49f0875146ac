"""Helpers shared by the benchmarks: timing, the machine they ran on, and RESULTS.md sections."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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


def report_section(heading: str, body: str, *, write: bool) -> None:
    """Print a benchmark's ``## heading`` section and, with ``write``, put it into RESULTS.md."""
    print(f"\n## {heading}\n\n{body}")
    if write:
        write_section(heading, body)
        print(f"\n(wrote the '## {heading}' section of bench/RESULTS.md)")


# ------------------------------------------------------------ shared runners


@dataclass
class Server:
    """A Postgres server for one benchmark run: its maintenance URL, version, and our temp home if embedded."""

    admin: str
    version: str
    home: Path | None

    def url(self, dbname: str) -> str:
        from psycopg import conninfo

        return conninfo.make_conninfo(self.admin, dbname=dbname)

    def describe(self) -> str:
        return f"PostgreSQL {self.version} ({'embedded' if self.home else 'LABCTL_DATABASE_URL'})"


@contextmanager
def bench_server(databases: Sequence[str], prefix: str = "labctl-bench-") -> Iterator[Server]:
    """LABCTL_DATABASE_URL's server, else an embedded one in a temp home (stopped and deleted after).

    The ``databases`` are dropped and created empty before, and dropped after.
    """
    import psycopg
    from psycopg import conninfo

    from labctl.db import embedded_url, remove_embedded

    configured = os.environ.get("LABCTL_DATABASE_URL")
    home = None if configured else Path(tempfile.mkdtemp(prefix=prefix))
    try:
        admin = conninfo.make_conninfo(configured or embedded_url(home), dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            for db in databases:
                conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                conn.execute(f"CREATE DATABASE {db}")
        yield Server(admin, row[0] if row else "?", home)
        with psycopg.connect(admin, autocommit=True) as conn:
            for db in databases:
                conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    finally:
        if home is not None:
            remove_embedded(home)
            shutil.rmtree(home, ignore_errors=True)


def server_cpu_seconds(url: str) -> float | None:
    """CPU seconds used so far by every process of the Postgres server at ``url`` (the postmaster's
    children, running or ended), or None when the server is not on this machine.

    For work spread over several connections (an import reads the source, appends, and looks up
    fingerprints on three): with the client's ``time.process_time``, the CPU a job took, which a
    busy machine's other work does not inflate the way it inflates wall time.
    """
    import psycopg

    def stat(pid: int | str) -> list[str]:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

    try:
        with psycopg.connect(url) as conn:
            postmaster = int(stat(conn.info.backend_pid)[1])
        own = stat(postmaster)
        ticks = int(own[13]) + int(own[14])  # ended children, once reaped
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    fields = stat(pid)
                except OSError:
                    continue  # ended meanwhile
                if int(fields[1]) == postmaster:
                    ticks += int(fields[11]) + int(fields[12])
    except OSError:
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def interleaved_times(rounds: int, cases: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """Seconds per call of each case, one call per round each, rotating who goes first."""
    names = list(cases)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            out[name].append(timed(cases[name]))
    return out


def run_quiet(argv: Sequence[str], env: dict[str, str] | None = None) -> None:
    """Run a command with its output discarded; raise if it fails."""
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)


def labctl_argv() -> list[str]:
    """The installed ``labctl`` console script beside this Python (what a user runs)."""
    exe = shutil.which("labctl", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "labctl.cli"]


def verdict(ok: bool, target: str) -> str:
    return f"{'PASS' if ok else 'FAIL'} {target}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [f"| {' | '.join(header)} |", "|---|" + "---:|" * (len(header) - 2) + "---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    everything = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in everything) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in everything
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def step_printer() -> Callable[[str], None]:
    """A progress printer that prefixes seconds since it was made."""
    start = time.perf_counter()
    return lambda what: print(f"[{time.perf_counter() - start:6.1f}s] {what}", flush=True)
