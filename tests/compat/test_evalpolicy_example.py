"""The original's eval-policy example: policies/eval_per_checkpoint.toml with recipes/eval.toml.

Its eval recipe declares the checkpoint as ``[inputs.checkpoint] type =
"artifact"``; the original's evald fills the input *named* ``checkpoint``
with each checkpoint. Each eval gets its own output (``eval_{inputs.checkpoint.alias}``)
and its metrics land on its own checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from tests.compat.lab import Lab, wait_state
from tests.conftest import run_cli

ORIGINAL = Path(__file__).resolve().parent / "original"
POLICY = ORIGINAL / "policies" / "eval_per_checkpoint.toml"


def test_the_example_policy_validates(lab: Lab) -> None:
    proc = lab.cli("validate", str(POLICY), check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('policy "eval_per_checkpoint" ok')


def test_each_checkpoint_is_evaluated_once_into_its_own_output(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    train = lab.run(ORIGINAL / "recipes" / "train.toml")["run_id"]
    steps = conn.execute(
        "SELECT artifact_id, path, step FROM run_outputs WHERE run_id = %s ORDER BY step", (train,)
    ).fetchall()
    assert [s[2] for s in steps] == [1, 2, 3]

    first = lab.cli("evald", "once", str(POLICY))
    again = lab.cli("evald", "once", str(POLICY))

    evals = conn.execute(
        "SELECT checkpoint_artifact_id, run_id FROM evals WHERE policy = 'eval_per_checkpoint' ORDER BY step"
    ).fetchall()
    assert [e[0] for e in evals] == [s[0] for s in steps], first.stdout + again.stdout
    run_cli(lab.user("alice"), "agent", "--drain", check=True, timeout=300)
    for (checkpoint_id, eval_run), (_, step_path, step) in zip(evals, steps, strict=True):
        assert wait_state(conn, eval_run, "succeeded", "failed") == "succeeded"
        row = conn.execute(
            "SELECT a.path, a.metadata -> 'result' FROM run_outputs o JOIN artifacts a ON a.id = o.artifact_id "
            "WHERE o.run_id = %s",
            (eval_run,),
        ).fetchone()
        assert row is not None
        assert row[1]["checkpoint"] == step_path  # the metrics are of this checkpoint
        inputs = conn.execute("SELECT role, artifact_id FROM run_inputs WHERE run_id = %s", (eval_run,)).fetchall()
        assert inputs == [("checkpoint", checkpoint_id)]
        alias = conn.execute(
            "SELECT recipe -> 'outputs' -> 'result' ->> 'alias' FROM runs WHERE id = %s", (eval_run,)
        ).fetchone()
        assert alias == (f"eval_train_{train}_step{step}",)
    recorded = conn.execute("SELECT step, metrics FROM evals ORDER BY step").fetchall()
    assert [(s, json.loads(m) if isinstance(m, str) else m) for s, m in recorded] == [
        (s[2], {"checkpoint": s[1], "score": len(f"step {s[2]} lr None\n")}) for s in steps
    ]
