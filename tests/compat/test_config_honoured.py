"""cluster.toml keys of the original do what they did there, on a real SLURM and real processes (issue 9):
``modules``, ``[scheduler]`` command paths, ``[dispatch.throttle]``, the SLURM job name."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl.executors.slurm import SlurmExecutor
from labctl.files import JobNameThrottle
from labctl.slurm_runs import enforce_job_name_throttle
from tests.conftest import agent, run_cli, wait_for

SLURM = [c for c in ("sbatch", "sacct", "squeue", "scancel", "scontrol") if shutil.which(c) is None]
needs_slurm = [
    pytest.mark.slurm,
    pytest.mark.skipif(bool(SLURM) and not os.environ.get("LABCTL_REQUIRE_SLURM"), reason="needs a real SLURM"),
]


def _printed(stdout: str, key: str) -> str:
    return next(line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith(f"{key}: "))


def _cluster(tmp_path: Path, kind: str, extra: str = "") -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'name = "lab"\n{extra}\n[filesystem]\nruns_base = "{tmp_path}/runs"\n'
        f'[filesystem.output_roots]\ndataset = "{tmp_path}/out"\n[scheduler]\nkind = "{kind}"\n'
    )
    return path


def test_modules_become_module_load_lines_before_the_job(env: dict[str, str], tmp_path: Path) -> None:
    """The original writes ``module load <m>`` for each of ``modules``, first thing in the job script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "module.calls"
    (bin_dir / "module").write_text(f'#!/bin/bash\necho "$*" >> {calls}\n')
    (bin_dir / "module").chmod(0o755)
    cluster = _cluster(tmp_path, "local", 'modules = ["cuda/12.4", "python/3.12 extra"]')
    recipe = tmp_path / "hello.toml"
    recipe.write_text('name = "hello"\ncommand = ["bash", "-c", "test -s ' + str(calls) + '"]\n')
    path_env = {**env, "PATH": f"{bin_dir}:{env['PATH']}"}

    out = run_cli(path_env, "--cluster", str(cluster), "run", str(recipe), "--wait", check=True).stdout

    assert "succeeded" in out  # the command saw the modules loaded before it ran
    assert calls.read_text() == "load cuda/12.4\nload python/3.12 extra\n"


def _wrappers(tmp_path: Path) -> tuple[Path, Path]:
    """sbatch/sacct/squeue/scancel wrappers in a directory off PATH that log each call, then run the real one."""
    wrap = tmp_path / "site-slurm"
    wrap.mkdir()
    log = tmp_path / "calls.log"
    for name in ("sbatch", "sacct", "squeue", "scancel"):
        real = shutil.which(name)
        (wrap / f"site-{name}").write_text(f'#!/bin/bash\necho "{name}" >> {log}\nexec {real} "$@"\n')
        (wrap / f"site-{name}").chmod(0o755)
    return wrap, log


@pytest.mark.parametrize("_", [None], ids=["real-slurm"])
@needs_slurm[0]
@needs_slurm[1]
def test_scheduler_command_paths_are_the_commands_labctl_runs_and_the_job_is_named_after_the_recipe(
    env: dict[str, str], tmp_path: Path, _: None
) -> None:
    wrap, log = _wrappers(tmp_path)
    scheduler = "\n".join(f'{n} = "{wrap}/site-{n}"' for n in ("sbatch", "sacct", "squeue", "scancel"))
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        f'name = "lab"\n[filesystem]\nruns_base = "{tmp_path}/runs"\n[scheduler]\nkind = "slurm"\n{scheduler}\n'
    )
    recipe = tmp_path / "nap.toml"
    recipe.write_text('name = "compat.nap"\ncommand = ["sleep", "60"]\n[resources]\nmem = "100MB"\n')
    env = {k: v for k, v in env.items() if k != "LABCTL_SLURM_BIN_DIR"}

    out = run_cli(env, "--cluster", str(cluster), "run", str(recipe), check=True).stdout
    run_id, job_id = _printed(out, "run_id"), _printed(out, "job_id")
    try:
        shown = subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%j|%k"], capture_output=True, text=True, check=True
        ).stdout.strip()
        # the original's name (its throttle counts jobs by it); the run id rides in the comment
        assert shown == f"compat_nap|{run_id}"
        run_cli(env, "--cluster", str(cluster), "reconcile", check=True)
        run_cli(env, "--cluster", str(cluster), "cancel", run_id, check=True)
    finally:
        subprocess.run(["scancel", job_id], check=False)

    assert {"sbatch", "sacct", "scancel"} <= set(log.read_text().split())


@pytest.fixture
def begin_later_jobs(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """Three of this user's jobs of one fresh name, pending (eligible an hour from now); cancelled after."""
    name = f"compat_throttle_{uuid.uuid4().hex[:8]}"
    ids = [
        subprocess.run(
            ["sbatch", "--parsable", f"--job-name={name}", "--begin=now+1hour", "--mem=10M", "--wrap", "true"],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,  # its slurm-<id>.out lands in the test's directory
        ).stdout.strip()
        for _ in range(3)
    ]
    yield name, ids
    subprocess.run(["scancel", *ids], check=False)


def _held(ids: list[str]) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%r"], capture_output=True, text=True, check=True
    ).stdout
    return sorted(i for i, _, reason in (line.partition("|") for line in out.splitlines()) if reason == "JobHeldUser")


@needs_slurm[0]
@needs_slurm[1]
def test_dispatch_throttle_holds_jobs_of_its_name_beyond_max_concurrent_and_releases_them_as_the_cap_allows(
    begin_later_jobs: tuple[str, list[str]],
) -> None:
    name, ids = begin_later_jobs
    executor = SlurmExecutor()

    held = enforce_job_name_throttle(executor, JobNameThrottle(job_name=name, max_concurrent=1), getpass.getuser())

    assert held == (2, 0)
    assert len(_held(ids)) == 2  # the excess, in squeue's order; one stays eligible
    released = enforce_job_name_throttle(executor, JobNameThrottle(job_name=name, max_concurrent=2), getpass.getuser())
    assert released == (0, 1)
    assert len(_held(ids)) == 1
    other = enforce_job_name_throttle(
        executor, JobNameThrottle(job_name="not-" + name, max_concurrent=1), getpass.getuser()
    )
    assert other == (0, 0)  # other names are not counted or touched


@needs_slurm[0]
@needs_slurm[1]
def test_the_agent_applies_dispatch_throttle_from_cluster_toml(
    env: dict[str, str], tmp_path: Path, begin_later_jobs: tuple[str, list[str]]
) -> None:
    name, ids = begin_later_jobs
    cluster = _cluster(tmp_path, "slurm")
    with cluster.open("a") as f:
        f.write(f'[dispatch]\nevald_interval_secs = 1\n[dispatch.throttle]\njob_name = "{name}"\nmax_concurrent = 2\n')

    with agent({**env, "LABCTL_CLUSTER": str(cluster)}, tmp_path / "agent.log"):
        wait_for(lambda: len(_held(ids)) == 1, "the agent to hold the third job", timeout=60)
        time.sleep(0.5)
    assert len(_held(ids)) == 1


def test_whole_node_memory_and_no_time_limit_run_on_the_local_executor(env: dict[str, str], tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, "local")
    recipe = tmp_path / "whole.toml"
    recipe.write_text('name = "whole"\ncommand = ["true"]\n[resources]\nmem = "0"\ntime = "UNLIMITED"\n')

    assert run_cli(env, "validate", str(recipe), check=True).stdout.startswith('recipe "whole" ok')
    out = run_cli(env, "--cluster", str(cluster), "run", str(recipe), "--wait", check=True).stdout

    assert "succeeded" in out
