"""Every recipe, pipeline, sweep and eval-policy example of the original (tests/compat/original/) validates,
and each that can run without GPUs or SLURM runs on the local executor end to end.

The original's smoke test (tests/smoke.rs) validates exactly these files; the
runs of train/eval/eval_from/from-pinned/policy/minimal are in
test_evalpolicy_example.py, test_recipes_from_pin.py and test_recipes_contract.py;
the ``#SBATCH`` lines of hetjob/sbatch_extra in test_slurm_render_original.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.compat.lab import Lab

ORIGINAL = Path(__file__).resolve().parent / "original"
EXAMPLES = sorted(p.relative_to(ORIGINAL).as_posix() for p in ORIGINAL.rglob("*.toml"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_validates(lab: Lab, name: str) -> None:
    proc = lab.cli("validate", str(ORIGINAL / name), check=False)
    assert proc.returncode == 0, proc.stderr
    assert " ok" in proc.stdout


def test_the_eb54594_recipes_with_dir_tokens_run_like_the_newer_ones(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    """eb54594's examples wrote ``{outputs.R.dir}`` where f66d1d9 writes ``.path``: the same directory."""
    run_id = lab.run(ORIGINAL / "eb54594" / "train.toml")["run_id"]
    steps = conn.execute("SELECT step FROM run_outputs WHERE run_id = %s ORDER BY step", (run_id,)).fetchall()
    assert [s[0] for s in steps] == [1, 2, 3]


def test_the_sweep_example_runs_every_point(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    """examples/recipes/sweep.toml: lr_index 0..7, at most 4 at once; each point its own checkpoint stream."""
    proc = lab.cli("run-sweep", str(ORIGINAL / "recipes" / "sweep.toml"), "--wait", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = conn.execute(
        "SELECT r.sweep_index, r.status, count(o.artifact_id) FROM runs r "
        "LEFT JOIN run_outputs o ON o.run_id = r.id WHERE r.sweep_id IS NOT NULL "
        "GROUP BY r.sweep_index, r.status ORDER BY r.sweep_index"
    ).fetchall()
    assert rows == [(i, "succeeded", 3) for i in range(8)]
    aliases = {r[0] for r in conn.execute("SELECT alias FROM aliases WHERE alias LIKE 'sweep_%'")}
    assert sorted(a.rpartition("_lr")[2] for a in aliases) == [str(i) for i in range(8)]
