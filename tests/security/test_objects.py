"""Issue 13 item 3: a rewritten .lab/output_hashes.json cannot make an artifact point at other bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from labctl.app import App
from labctl.artifacts import dir_content_hash
from labctl.db import Database
from labctl.executors.base import JobState
from labctl.files import local_profile
from labctl.finish import finish_run
from tests.conftest import run_cli
from tests.test_runs_acceptance import printed, status_of


def test_a_lying_output_hash_never_puts_other_bytes_behind_an_honest_artifact(
    env: dict[str, str], conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    honest = tmp_path / "honest"
    honest.mkdir()
    (honest / "f").write_text("good\n")
    good = dir_content_hash(honest)

    # mallory's job (on a compute node, where the job writes the hash file) writes other bytes and claims `good`
    (tmp_path / "evil.toml").write_text(
        'name = "evil"\ncommand = "true"\n[outputs.o]\ntype = "dataset"\nmarker = "f"\nalias = "evil-{run.id}"\n'
    )
    mallory = {**env, "LABCTL_USER": "mallory"}
    evil = printed(run_cli(mallory, "run", str(tmp_path / "evil.toml"), check=True).stdout, "run_id")
    row = conn.execute("SELECT run_dir FROM runs WHERE id = %s", (evil,)).fetchone()
    assert row is not None
    run_dir = Path(row[0])
    context = json.loads((run_dir / ".lab" / "context.json").read_text())
    out = Path(context["outputs"]["o"]["path"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "f").write_text("evil\n")
    (run_dir / ".lab" / "output_hashes.json").write_text(json.dumps({"o": good}))
    home = Path(env["LABCTL_HOME"])
    app = App(local_profile(home), None, home, Database(env["LABCTL_DATABASE_URL"]), "mallory")
    try:
        finish_run(app.db, app.config, evil, JobState(job_id="x", state="succeeded", exit_code=0), app.meta())
    finally:
        app.close()

    # alice's honest run writes exactly the `good` bytes: it must not end up pointing at mallory's
    (tmp_path / "honest.toml").write_text(
        'name = "honest"\ncommand = [\'bash\', \'-c\', \'echo good > "$1/f"\', "_", "{outputs.o.path}"]\n'
        '[outputs.o]\ntype = "dataset"\nmarker = "f"\nalias = "honest-{run.id}"\n'
    )
    proc = run_cli(env, "run", str(tmp_path / "honest.toml"), "--wait")
    run_id = printed(proc.stdout, "run_id")
    linked = conn.execute(
        "SELECT a.path FROM run_outputs o JOIN artifacts a ON a.id = o.artifact_id WHERE o.run_id = %s", (run_id,)
    ).fetchall()
    for (path,) in linked:
        assert (Path(path) / "f").read_text() == "good\n", "alice's artifact points at mallory's bytes"
    assert status_of(conn, run_id) == "failed"
    reason = conn.execute("SELECT reason FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert reason is not None and "no longer matches its hash" in reason[0]

    audit = run_cli(env, "audit", "objects")
    assert audit.returncode == 1 and "no longer hash to " + good in audit.stdout, audit.stdout + audit.stderr
    assert "1 of 1 stored objects changed" in audit.stderr
