"""The ``#SBATCH`` lines of the original's recipes are the original's lines (issue 9).

Expectations are derived from the original's ``render_script`` (runner.rs at
f66d1d9) and its het-job tests, rendered against its single-user example
cluster (``qos = "low"``, ``gres_gpu_syntax = "gpu:{n}"``). Two values are
written differently with the same meaning to SLURM: ``--mem`` in megabytes
(``256GB`` -> ``262144``), ``--time`` as ``D-HH:MM:SS`` and ``--array`` as
the list of indices submitted (``0,1,...,7%4`` for ``0-7%4``); the comparison
reads both sides as SLURM does. Ours adds ``--comment=<run id>`` (how a job is
found again after a crash). The log file lines are compared by presence only.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgspec
import pytest

from labctl.executors.base import JobSpec
from labctl.executors.sbatch_script import render_sbatch_header
from labctl.executors.slurm import expand_array_spec
from labctl.files import Resources, SlurmSettings, load_cluster_config, load_recipe, parse_mem_mb, parse_time_seconds
from labctl.slurm_runs import slurm_job_name

HERE = Path(__file__).parent
RECIPES = HERE / "slurm_recipes"
SINGLE_USER = load_cluster_config(HERE / "clusters" / "single-user.toml").slurm

#: runner.rs, het_tests + render_script, for examples/recipes/hetjob.toml
HETJOB_EXPECTED = [
    "--job-name=hetjob_example",
    "--qos=low",
    "--cpus-per-task=48",
    "--mem=256GB",
    "--time=12:00:00",
    "--output",
    "--error",
    "hetjob",
    "--nodes=1",
    "--cpus-per-task=16",
    "--mem=128GB",
    "--gres=gpu:4",
]
#: render_script for examples/recipes/train.toml
TRAIN_EXPECTED = [
    "--job-name=train_example",
    "--qos=low",
    "--gres=gpu:1",
    "--cpus-per-task=8",
    "--mem=32GB",
    "--time=04:00:00",
    "--output",
    "--error",
]
#: render_script for examples/recipes/sweep.toml as run-sweep submits it (start 0, end 7, throttle 4)
SWEEP_EXPECTED = [
    "--job-name=sweep_example",
    "--qos=low",
    "--gres=gpu:1",
    "--cpus-per-task=4",
    "--mem=16GB",
    "--time=01:00:00",
    "--output",
    "--error",
    "--array=0-7%4",
]
#: docs/RECIPE_CONTRACT.md's sbatch_extra snippet: the extra flags after the typed ones
CONTRACT_EXPECTED = [
    "--job-name=contract_extra",
    "--qos=low",
    "--gres=gpu:4",
    "--cpus-per-task=16",
    "--mem=64GB",
    "--time=12:00:00",
    "--output",
    "--error",
    "--array=0-3",
    "--mail-type=END,FAIL",
    "--gpu-bind=closest",
]


def _job(recipe_name: str, *, array: str | None = None) -> JobSpec:
    run_dir = Path("/tmp/labctl-test/run")
    return JobSpec(
        run_id="run_test",
        run_dir=run_dir,
        script=run_dir / ".lab" / "submit.sh",
        log_path=run_dir / ".lab" / "%x_%j.log",
        time_limit_seconds=None,
        job_name=slurm_job_name(recipe_name),
        comment="run_test",
        array=array,
    )


def _as_slurm_reads_it(lines: list[str]) -> list[str]:
    """Values SLURM reads the same written one way (``--mem=262144``, ``--time=0-12:00:00``)."""
    out = []
    for line in lines:
        flag, _, value = line.partition("=")
        if flag == "--mem":
            line = f"--mem={parse_mem_mb(value)}"
        elif flag == "--time":
            line = f"--time={parse_time_seconds(value)}"
        elif flag == "--array":  # ours lists the indices it submits: 0,1,...,7%4 is 0-7%4
            line = f"--array={expand_array_spec(value)}%{value.partition('%')[2]}"
        elif flag in ("--output", "--error"):
            line = flag
        out.append(line)
    return out


def _ours(recipe_file: str, *, array: str | None = None) -> list[str]:
    recipe = load_recipe(RECIPES / recipe_file, pipeline=True, eval_policy=True)
    header = render_sbatch_header(_job(recipe.name, array=array), resources=recipe.resources, slurm=SINGLE_USER)
    lines = [line.removeprefix("#SBATCH ") for line in header.splitlines()]
    assert lines[1] == "--comment=run_test"  # ours: the run id rides along
    return _as_slurm_reads_it([lines[0], *lines[2:]])


@pytest.mark.parametrize(
    ("recipe_file", "array", "expected"),
    [
        ("hetjob.toml", None, HETJOB_EXPECTED),
        ("train.toml", None, TRAIN_EXPECTED),
        ("sweep.toml", ",".join(map(str, range(8))) + "%4", SWEEP_EXPECTED),
        ("contract_extra.toml", None, CONTRACT_EXPECTED),
    ],
)
def test_original_recipe_renders_the_original_sbatch_lines_in_its_order(
    recipe_file: str, array: str | None, expected: list[str]
) -> None:
    assert _ours(recipe_file, array=array) == _as_slurm_reads_it(expected)


def test_hetjob_keeps_component_zero_and_job_wide_lines_appear_once() -> None:
    """runner.rs het_tests: one separator per extra component, component 0's own resources survive,
    time does not repeat, base and component nodes are independent."""
    lines = _ours("hetjob_nodes.toml")

    assert lines.count("hetjob") == 1
    zero, one = lines[: lines.index("hetjob")], lines[lines.index("hetjob") + 1 :]
    assert "--nodes=2" in zero and "--cpus-per-task=48" in zero
    assert one[:3] == ["--nodes=1", "--cpus-per-task=16", f"--mem={parse_mem_mb('128GB')}"]
    assert sum(line.startswith("--time=") for line in lines) == 1
    assert sum(line.startswith("--nodes=") for line in lines) == 2


def test_sbatch_extra_written_with_a_leading_sbatch_is_normalised_not_doubled() -> None:
    """The original refuses ``"#SBATCH --exclusive"`` ("must be bare flags"); the intent is plain, so here
    the prefix is taken off: one ``#SBATCH --exclusive`` line, never ``#SBATCH #SBATCH --exclusive``."""
    lines = _ours("hash_prefixed_extra.toml")

    assert lines[lines.index("--error") + 1 :] == [
        "--exclusive",
        "--signal=USR1@60",
        "hetjob",
        "--nodes=1",
        "--cpus-per-task=2",
        f"--mem={parse_mem_mb('1GB')}",
        "--exclusive",
    ]
    header = render_sbatch_header(
        _job("x"), resources=load_recipe(RECIPES / "hash_prefixed_extra.toml").resources, slurm=SINGLE_USER
    )
    assert "#SBATCH #" not in header


def test_a_comment_in_sbatch_extra_is_refused() -> None:
    resources = Resources(sbatch_extra=["# not a flag"])

    with pytest.raises(ValueError, match="not an sbatch flag"):
        render_sbatch_header(_job("x"), resources=resources, slurm=SINGLE_USER)


def test_mem_zero_and_unlimited_time_reach_sbatch_as_slurm_spells_them() -> None:
    lines = _ours("whole_node.toml")

    assert "--mem=0" in lines
    header = render_sbatch_header(
        _job("whole_node"), resources=load_recipe(RECIPES / "whole_node.toml").resources, slurm=SINGLE_USER
    )
    assert "#SBATCH --time=UNLIMITED\n" in header and "#SBATCH --mem=0\n" in header


@pytest.mark.slurm
@pytest.mark.skipif(subprocess.run(["which", "sbatch"], capture_output=True).returncode != 0, reason="needs sbatch")
@pytest.mark.parametrize("recipe_file", ["hetjob_small.toml", "whole_node.toml", "hash_prefixed_extra.toml"])
def test_the_real_sbatch_accepts_the_rendered_header(tmp_path: Path, recipe_file: str) -> None:
    """``sbatch --test-only`` parses the script as it would submit it (het jobs never start on this one-node
    cluster, see DEVELOPERS.md, so this is as far as a het job goes here)."""
    recipe = load_recipe(RECIPES / recipe_file)
    job = msgspec.structs.replace(_job(recipe.name), log_path=tmp_path / "%x_%j.log")
    script = tmp_path / "submit.sh"
    header = render_sbatch_header(job, resources=recipe.resources, slurm=SlurmSettings())
    script.write_text("#!/bin/bash\n" + header + "true\n")

    proc = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60)

    assert proc.returncode == 0, proc.stderr
    assert "to start at" in proc.stderr
