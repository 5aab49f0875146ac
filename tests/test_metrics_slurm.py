"""Metrics of a job on the real SLURM cluster: `labctl reconcile` ingests them while the job runs and
at its end, each line once although every reconcile is a new process (marked ``slurm``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

import events
from tests.test_metrics_cli import JOB
from tests.test_slurm_runs import JOB_DEADLINE, Lab, lab  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slurm


def test_reconcile_ingests_a_running_slurm_jobs_metrics_and_the_rest_once_at_its_end(lab: Lab) -> None:  # noqa: F811
    recipe = lab.directory / "metrics.toml"
    recipe.write_text(f'name = "slurm-metrics"\ncommand = {json.dumps([sys.executable, "-c", JOB])}\n')
    run_id, job_id = lab.run(recipe)
    assert job_id != "-"

    def steps() -> list[int]:
        logged = events.read_stream(lab.conn, f"metrics-{run_id}")
        return [p.step for e in logged for p in e.data.points]  # type: ignore[union-attr]

    give_up = time.monotonic() + JOB_DEADLINE
    while steps() != [0, 1, 2]:
        assert time.monotonic() < give_up, f"no live metrics: {lab.explain(run_id)}"
        report = lab.reconcile()
        time.sleep(0.3)
    assert lab.status(run_id) == "running"
    assert report["metric_points"] in (0, 3)
    (Path(lab.row(run_id)["run_dir"]) / "go").touch()
    assert lab.wait_status(run_id, {"succeeded", "failed"}) == "succeeded", lab.explain(run_id)
    lab.reconcile()  # once more after the end: nothing new, nothing twice
    assert steps() == [0, 1, 2, 3, 4, 5]
    shown = lab.cli("metrics", run_id, "--metric", "loss", "--json").stdout
    assert json.loads(shown)[0]["steps"] == [0, 1, 2, 3, 4, 5]
