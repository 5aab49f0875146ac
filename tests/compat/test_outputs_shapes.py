"""Commands answer in the original's shape (main.rs), so scripts written against it keep working.

Piped (as a script reads them), ``run-pipeline``, ``pipeline-show``, ``show``,
``evald once`` and ``reconcile`` print JSON with the original's keys (ours
beside them); ``run`` and ``run-sweep`` print the original's ``key: value`` lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from tests.compat.lab import Lab, printed

ORIGINAL = Path(__file__).resolve().parent / "original"

TWO_STAGES = """\
name = "train_then_eval"

[stages.train]
recipe = "TRAIN"

[stages.eval]
recipe = "eval_stage.toml"
"""
EVAL_STAGE = """\
name    = "eval_stage"
repo    = "myrepo"
command = ["python", "scripts/eval.py", "--checkpoint", "{inputs.ckpt.path}/step3", "--out", "{outputs.result.path}"]

[inputs.ckpt]
type  = "stage"
stage = "train"
role  = "checkpoint"

[outputs.result]
type   = "eval_result"
marker = "metrics.json"
alias  = "eval_stage_{run.id}"
"""


def test_run_prints_the_local_job_id_and_the_cache_hit_line(lab: Lab) -> None:
    recipe = ORIGINAL / "recipes" / "train.toml"
    first = lab.run(recipe)
    assert first["job_id"] == f"local-{first['run_id']}"

    again = lab.cli("run", str(recipe)).stdout
    shown = printed(again)
    assert shown["job_id"] == ""  # no job: the original prints an empty id
    assert "cache_hit: true (reused prior outputs; no SLURM job submitted)" in again.splitlines()


def test_run_sweep_prints_the_array_lines(lab: Lab) -> None:
    out = lab.cli("run-sweep", str(ORIGINAL / "recipes" / "sweep.toml")).stdout
    shown = printed(out)
    assert shown["array_run_id"].startswith("sweep_")
    assert shown["array_job_id"] == f"local-{shown['array_run_id']}"
    assert shown["array_run_dir"] == str(lab.runs_base / "runs" / "alice" / shown["array_run_id"])
    assert "aggregate_run_id" not in shown

    agg = lab.recipe("agg.toml", 'name = "agg"\ncommand = ["true"]\n')
    with_agg = lab.recipe(
        "sweep_agg.toml",
        (ORIGINAL / "recipes" / "sweep.toml")
        .read_text()
        .replace('# aggregate = "aggregate.toml"', f'aggregate = "{agg}"'),
    )
    shown = printed(lab.cli("run-sweep", str(with_agg)).stdout)
    assert shown["aggregate_run_id"].startswith("run_")
    assert shown["aggregate_job_id"] == ""  # submitted once every point succeeded
    assert shown["aggregate_run_dir"] == str(lab.runs_base / "runs" / "alice" / shown["aggregate_run_id"])


def test_run_pipeline_and_pipeline_show_print_the_originals_json(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    lab.recipe("eval_stage.toml", EVAL_STAGE)
    pipeline = lab.recipe("two.toml", TWO_STAGES.replace("TRAIN", str(ORIGINAL / "recipes" / "train.toml")))

    submitted = json.loads(lab.cli("run-pipeline", str(pipeline)).stdout)
    assert submitted["pipeline_id"].startswith("pipeline_") and submitted["name"] == "train_then_eval"
    train, evaluate = submitted["stages"]
    assert set(train) >= {"stage_name", "run_id", "job_id", "depends_on"}
    assert (train["stage_name"], train["job_id"], train["depends_on"]) == (
        "train",
        f"local-{train['run_id']}",
        [],
    )
    assert (evaluate["stage_name"], evaluate["job_id"], evaluate["depends_on"]) == ("eval", "", [train["run_id"]])

    lab.cli("agent", "--drain")
    shown = json.loads(lab.cli("pipeline-show", submitted["pipeline_id"]).stdout)
    assert set(shown["pipeline"]) == {"id", "name", "pipeline_path", "created_at"}
    assert shown["pipeline"]["pipeline_path"] == str(pipeline) and isinstance(shown["pipeline"]["created_at"], int)
    by_stage = {s["stage_name"]: s for s in shown["stages"]}
    assert set(by_stage["eval"]) >= {"stage_name", "run_id", "job_id", "status", "dependency_on", "run_dir"}
    assert by_stage["eval"]["dependency_on"] == {"afterok": [{"stage": "train", "run_id": train["run_id"]}]}
    assert by_stage["eval"]["status"] == "succeeded"
    assert by_stage["train"]["run_dir"] == str(lab.runs_base / "runs" / "alice" / train["run_id"])
    assert [s["name"] for s in shown["dag"]] == ["train", "eval"]  # ours, beside


def test_show_prints_the_originals_run_view(lab: Lab) -> None:
    data = lab.root / "data" / "d"
    data.mkdir(parents=True)
    lab.cli("register-external", "--alias", "ifeval_replay_v1", "--path", str(data), "--kind", "dataset")
    run_id = lab.run(ORIGINAL / "contract" / "minimal.toml")["run_id"]

    shown = json.loads(lab.cli("show", run_id).stdout)

    run = shown["run"]
    assert set(run) >= {
        "id", "recipe_name", "recipe_hash", "status", "job_id", "run_dir", "repo", "source_path", "recipe_json",
        "context_json", "created_at", "finished_at", "pipeline_id", "stage_name", "dependency_on", "submitted_by",
        "cache_key",
    }  # fmt: skip
    assert (run["id"], run["recipe_name"], run["status"], run["submitted_by"]) == (
        run_id,
        "fit_qwen3vl",
        "succeeded",
        "alice",
    )
    assert run["job_id"] == f"local-{run_id}" and run["repo"] == "omegalax"
    assert run["source_path"] == run["context_json"]["source_path"]
    assert run["recipe_hash"] == run["context_json"]["recipe_hash"]
    [given] = shown["inputs"]
    assert (given["role"], given["resolved_path"]) == ("dataset", str(data)) and given["artifact_id"]
    [out] = shown["outputs"]
    assert set(out) >= {"id", "kind", "path", "producer_run_id", "metadata_json", "created_at"}
    assert (out["kind"], out["producer_run_id"], out["metadata_json"]["step"]) == ("checkpoint", run_id, 100)
    assert shown["aliases"] == [[f"fit_qwen3vl_{run_id}", out["id"]]]
    assert shown["eval_requests"] == []


def test_evald_once_and_reconcile_print_the_originals_counts(lab: Lab) -> None:
    train = lab.run(ORIGINAL / "recipes" / "train.toml")["run_id"]
    policy = str(ORIGINAL / "policies" / "eval_per_checkpoint.toml")

    report = json.loads(lab.cli("evald", "once", policy).stdout)
    assert {k: report[k] for k in report if k != "run_ids"} == {
        "considered": 3,
        "submitted": 3,
        "retried": 0,
        "skipped_existing": 0,
        "skipped_ineligible": 0,
        "skipped_exhausted": 0,
    }
    # show lists the evals of a training run's checkpoints, and an eval run shows the eval it is
    requests = json.loads(lab.cli("show", train).stdout)["eval_requests"]
    assert sorted(r["eval_run_id"] for r in requests) == sorted(report["run_ids"])
    for eval_run in report["run_ids"]:
        [own] = json.loads(lab.cli("show", eval_run).stdout)["eval_requests"]
        assert own["eval_run_id"] == eval_run and own in requests
    reconciled = json.loads(lab.cli("reconcile").stdout)
    assert set(reconciled) >= {"runs_reconciled", "artifacts_registered", "runs_failed"}
