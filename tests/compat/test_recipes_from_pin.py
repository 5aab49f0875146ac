"""A pipeline's ``from`` pin, as in the original's examples/pipelines/from-pinned.toml with recipes/eval_from.toml.

An input ``type = "from"`` of the pinned run's checkpoint stream resolves to
its newest step artifact, id included, as the original does (the pin's
outputs keyed by role, the last registered winning), not to the stream's
directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg

from tests.compat.lab import Lab

ORIGINAL = Path(__file__).resolve().parent / "original"


def test_a_pinned_checkpoint_stream_gives_its_newest_step(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    train = lab.run(ORIGINAL / "recipes" / "train.toml")["run_id"]
    newest = conn.execute(
        "SELECT artifact_id, path FROM run_outputs WHERE run_id = %s ORDER BY step DESC LIMIT 1", (train,)
    ).fetchone()
    assert newest is not None and newest[1].endswith("step3")
    shutil.copytree(ORIGINAL / "recipes", lab.root / "recipes", dirs_exist_ok=True)
    pipeline = lab.root / "pipelines" / "from-pinned.toml"
    pipeline.parent.mkdir()
    text = (ORIGINAL / "pipelines" / "from-pinned.toml").read_text()
    pipeline.write_text(text.replace("run_REPLACE_WITH_A_REAL_TRAIN_RUN_ID", train))

    proc = lab.cli("run-pipeline", str(pipeline), "--wait", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    eval_run = conn.execute("SELECT id FROM runs WHERE stage_name = 'eval'").fetchone()
    assert eval_run is not None
    inputs = conn.execute(
        "SELECT role, type, artifact_id, path FROM run_inputs WHERE run_id = %s", (eval_run[0],)
    ).fetchall()
    assert inputs == [("checkpoint", "from", newest[0], newest[1])]
    result = conn.execute(
        "SELECT a.metadata -> 'result' ->> 'checkpoint' FROM run_outputs o JOIN artifacts a ON a.id = o.artifact_id "
        "WHERE o.run_id = %s",
        (eval_run[0],),
    ).fetchone()
    assert result == (newest[1],)
