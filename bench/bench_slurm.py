"""The SLURM executor at 1,000 active jobs: sacct calls per reconcile cycle, poll time, submission rates.

Against the real cluster (scripts/slurm-up.sh). Submits N held jobs one
`sbatch` each (the raw loop), waits until accounting knows all of them, then
times reconcile cycles (``poll`` of the N distinct ids) and counts sacct
calls per cycle (must be 1). Then submits the same sweep as one N-element
held array (one sbatch) and compares submission rates. Held jobs stay
PENDING and use no CPUs; everything is scancelled at the end.

    PYTHONPATH=. python bench/bench_slurm.py [--jobs 1000] [--cycles 5] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_line, report_section

from labctl.executors.base import JobSpec
from labctl.executors.sbatch_script import render_sbatch_script
from labctl.executors.slurm import SlurmExecutor
from labctl.files.cluster import SlurmSettings
from labctl.files.recipe import Resources

HELD = Resources(cpus=1, mem="100MB", time="00:05:00", sbatch_extra=["--hold"])


def job_spec(directory: Path, name: str, array: str | None = None) -> JobSpec:
    run_dir = directory / name
    (run_dir / ".lab").mkdir(parents=True)
    job = JobSpec(
        run_id=name,
        run_dir=run_dir,
        script=run_dir / ".lab" / "submit.sh",
        log_path=Path("/dev/null"),
        time_limit_seconds=300,
        job_name=f"labctl-bench-{name}",
        array=array,
    )
    script = render_sbatch_script(
        job,
        resources=HELD,
        slurm=SlurmSettings(),
        env={"LABCTL_RUN_ID": name},
        command=["sleep", "1"],
        workdir=run_dir,
        labctl_bin="true",
        run_dir=run_dir,
    )
    job.script.write_text(script)
    return job


def wait_until_accounted(executor: SlurmExecutor, job_ids: list[str], deadline: float = 120.0) -> float:
    """Seconds until one sacct call returns a row for every id (accounting lags sbatch)."""
    start = time.perf_counter()
    probe = SlurmExecutor()
    while time.perf_counter() - start < deadline:
        states = probe.poll(job_ids)
        if probe.squeue_calls == 0 and len(states) == len(job_ids):
            return time.perf_counter() - start
        probe.squeue_calls = 0
        time.sleep(1)
    raise SystemExit(f"accounting did not list all {len(job_ids)} jobs within {deadline:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100 jobs, 3 cycles")
    parser.add_argument("--write", action="store_true", help="replace the '## SLURM executor' section of RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.cycles = 100, 3
    n = args.jobs
    executor = SlurmExecutor()
    submitted: list[str] = []
    with tempfile.TemporaryDirectory(prefix="labctl-bench-slurm-") as tmp:
        directory = Path(tmp)
        try:
            specs = [job_spec(directory, f"loop{i:05d}") for i in range(n)]
            start = time.perf_counter()
            for spec in specs:
                submitted.append(executor.submit(spec))
            loop_seconds = time.perf_counter() - start
            lag = wait_until_accounted(executor, submitted)

            cycle_seconds = []
            sacct_per_cycle = []
            squeue_per_cycle = []
            for _ in range(args.cycles):
                sacct_before, squeue_before = executor.sacct_calls, executor.squeue_calls
                start = time.perf_counter()
                states = executor.poll(submitted)
                cycle_seconds.append(time.perf_counter() - start)
                sacct_per_cycle.append(executor.sacct_calls - sacct_before)
                squeue_per_cycle.append(executor.squeue_calls - squeue_before)
                assert len(states) == n and all(s.state == "submitted" for s in states.values()), "not all pending"

            array_spec = job_spec(directory, "array", array=f"0-{n - 1}")
            start = time.perf_counter()
            array_id = executor.submit(array_spec)
            array_seconds = time.perf_counter() - start
            submitted.append(array_id)
            wait_until_accounted(executor, [array_id])
            start = time.perf_counter()
            elements = executor.poll_array(array_id)
            array_poll_seconds = time.perf_counter() - start
        finally:
            start = time.perf_counter()
            executor.cancel(submitted)
            cancel_seconds = time.perf_counter() - start

    sacct_version = subprocess.run(["sacct", "--version"], capture_output=True, text=True).stdout.strip()
    lines = []
    out = lines.append
    out(
        f"`bench/bench_slurm.py`{' --quick' if args.quick else ''}: {sacct_version}, {platform.node()}, "
        f"one-node cluster, {n} held jobs (PENDING, no CPU used; scancelled at the end)."
    )
    out("")
    out(f"Machine: {machine_line()}.")
    out("")
    out("| measure | value |")
    out("|---|---|")
    calls = f"{max(sacct_per_cycle)} (squeue: {max(squeue_per_cycle)})"
    out(f"| sacct calls per reconcile cycle ({n} distinct ids) | {calls} |")
    out(
        f"| poll cycle time, median of {args.cycles} (min-max) | {statistics.median(cycle_seconds) * 1000:.0f} ms "
        f"({min(cycle_seconds) * 1000:.0f}-{max(cycle_seconds) * 1000:.0f} ms) |"
    )
    out(f"| raw loop: {n} x sbatch | {loop_seconds:.1f} s ({n / loop_seconds:.0f} jobs/s) |")
    out(f"| one {n}-element array: 1 x sbatch | {array_seconds * 1000:.0f} ms ({n / array_seconds:.0f} jobs/s) |")
    out(f"| array vs loop submission speed-up | {loop_seconds / array_seconds:.0f}x |")
    array_poll = f"{array_poll_seconds * 1000:.0f} ms, {len(elements)} elements"
    out(f"| poll_array of the {n}-element array (pending range) | {array_poll} |")
    out(f"| accounting lag: last of {n} sbatch -> all in sacct | {lag:.1f} s |")
    out(f"| scancel of {n + 1} ids (one call) | {cancel_seconds * 1000:.0f} ms |")

    body = "\n".join(lines)
    report_section("SLURM executor", body, write=args.write)


if __name__ == "__main__":
    main()
