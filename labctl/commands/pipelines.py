"""Pipelines and sweeps: run-pipeline, run-sweep, pipeline-show / pipeline ls|show, sweep show."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

pipeline_app = typer.Typer(no_args_is_help=True, help="Pipelines: list them, show one as a DAG.")
sweep_app = typer.Typer(no_args_is_help=True, help="Sweeps: show points x state x key metric.")


def _wait_pipeline(a: Any, submitted: Any) -> None:
    from labctl.commands._common import Progress, wait_for_runs
    from labctl.runs import pipeline_state, stage_labels
    from labctl.throttle import Scope
    from labctl.wait import Watch

    all_runs = [r for runs in submitted.runs.values() for r in runs]
    labels = stage_labels(a.db.conn, all_runs)
    progress = Progress(a, labels, total=len(all_runs))
    watch = Watch(a, all_runs, progress, pipeline_id=submitted.pipeline_id)
    final = wait_for_runs(a, watch, Scope(pipeline_id=submitted.pipeline_id))
    row = pipeline_state(a.db.conn, submitted.pipeline_id)
    status = row[0] if row else "unknown"
    typer.echo(f"{submitted.pipeline_id}: {status}" + (f" ({row[1]})" if row and row[1] else ""))
    if status != "succeeded" or any(s not in ("succeeded", "cache_hit") for s in final.values()):
        raise typer.Exit(1)


def _hand_to_slurm(a: Any, submitted: Any, executor: str | None) -> dict[str, str]:
    """Submit the pipeline's ready SLURM runs now, so job ids exist before any agent looks; run id -> job id."""
    if (executor or a.executor) != "slurm":
        return {}
    from labctl.slurm_runs import holder_id, submit_queued

    all_runs = [r for runs in submitted.runs.values() for r in runs]
    return submit_queued(a, a.slurm_executor(), holder_id(), run_ids=all_runs)


def _after_submit(
    a: Any, submitted: Any, executor: str | None, *, wait: bool, as_json: bool | None = None, sweep: bool = False
) -> None:
    """What run-pipeline and run-sweep do once recorded: hand ready runs to SLURM, print, maybe wait.

    run-pipeline prints the original's JSON when piped (or with ``--json``), run-sweep the original's
    ``array_*`` lines; both add ours.
    """
    from labctl.commands._common import wants_json

    jobs = _hand_to_slurm(a, submitted, executor)
    if sweep:
        _print_sweep(a, submitted, jobs)
    if not sweep and wants_json(as_json):
        from labctl.pipelines.view import submission_view
        from labctl.runs import to_json

        typer.echo(to_json(submission_view(a.db.conn, submitted)))
    else:
        _print_submitted(submitted)
        for run_id, job_id in sorted(jobs.items()):
            typer.echo(f"{run_id}: job {job_id}")
    if wait:
        _wait_pipeline(a, submitted)


def _print_submitted(submitted: Any) -> None:
    typer.echo(f"pipeline_id: {submitted.pipeline_id}")
    if submitted.sweep_id:
        typer.echo(f"sweep_id: {submitted.sweep_id}")
    for stage, runs in submitted.runs.items():
        typer.echo(f"stage {stage}: {', '.join(runs)}")


def _print_sweep(a: Any, submitted: Any, jobs: dict[str, str]) -> None:
    """The original's lines for its one array run (here: the sweep) and the aggregate run."""
    from labctl import layout

    points = submitted.runs[next(iter(submitted.runs))]
    array_job = next((j.split("_")[0] for r, j in jobs.items() if r in points), None)
    typer.echo(f"array_run_id: {submitted.sweep_id}")
    typer.echo(f"array_job_id: {array_job or layout.local_job_id(submitted.sweep_id)}")
    typer.echo(f"array_run_dir: {layout.run_dir(a.config.filesystem.runs_base, a.user, submitted.sweep_id)}")
    if len(submitted.runs) > 1:
        aggregate = submitted.runs[list(submitted.runs)[-1]][0]
        typer.echo(f"aggregate_run_id: {aggregate}")
        typer.echo(f"aggregate_job_id: {jobs.get(aggregate, '')}")  # it is submitted once every point succeeded
        typer.echo(f"aggregate_run_dir: {layout.run_dir(a.config.filesystem.runs_base, a.user, aggregate)}")


def run_pipeline(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline file (TOML).")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override params.K=V, args.K=V or env.K=V in every stage that has the key; "
            "STAGE:params.K=V in one stage.",
        ),
    ] = None,
    executor: Annotated[str | None, typer.Option(help="local or slurm (default: the cluster's).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show state changes until the pipeline ends.")] = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Run every stage even if an identical run succeeded.")
    ] = False,
    as_json: Annotated[
        bool | None, typer.Option("--json/--no-json", help="The submission as JSON (default: JSON when piped).")
    ] = None,
    each: Annotated[
        str | None,
        typer.Option(
            "--each",
            help="KEY=V1,V2,... or KEY=A..B: the pipeline once per value (as --set KEY=VALUE), all recorded together.",
        ),
    ] = None,
) -> None:
    """Submit a pipeline: roots now, the rest as their parents succeed."""
    from labctl.commands._common import open_app
    from labctl.errors import InputError
    from labctl.pipelines.plan import run_pipeline as start
    from labctl.pipelines.plan import run_pipelines

    if each is not None and wait:
        raise InputError("--wait follows one pipeline; without --each, or watch them with `labctl status`")
    a = open_app()
    if each is None:
        submitted = start(a, pipeline, executor=executor, overrides=set_ or [], no_cache=no_cache)
        _after_submit(a, submitted, executor, wait=wait, as_json=as_json)
        return
    from labctl.commands._common import wants_json

    many = run_pipelines(a, pipeline, each, executor=executor, overrides=set_ or [], no_cache=no_cache)
    jobs = {run_id: job_id for s in many for run_id, job_id in _hand_to_slurm(a, s, executor).items()}
    if wants_json(as_json):
        from labctl.pipelines.view import submission_view
        from labctl.runs import to_json

        typer.echo(to_json([submission_view(a.db.conn, s) for s in many]))
        return
    for s in many:
        _print_submitted(s)
    for run_id, job_id in sorted(jobs.items()):
        typer.echo(f"{run_id}: job {job_id}")


def run_sweep(
    recipe: Annotated[Path, typer.Argument(help="Recipe with a [sweep] table.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override params.K=V, args.K=V or env.K=V.")] = None,
    executor: Annotated[str | None, typer.Option(help="local or slurm (default: the cluster's).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show state changes until the sweep ends.")] = False,
) -> None:
    """One run per sweep index (at most `throttle` at once), then the aggregate once all succeeded."""
    from labctl.commands._common import open_app
    from labctl.files import load_recipe
    from labctl.pipelines.plan import run_sweep as start
    from labctl.submit import apply_overrides

    recipe_obj = apply_overrides(load_recipe(recipe), set_ or [])
    a = open_app()
    _after_submit(a, start(a, recipe_obj, recipe, executor=executor), executor, wait=wait, sweep=True)


def pipeline_show(
    ref: Annotated[str, typer.Argument(help="Pipeline id (or unambiguous prefix).")],
    as_json: Annotated[
        bool | None, typer.Option("--json/--no-json", help="JSON instead of the tree (default: JSON when piped).")
    ] = None,
) -> None:
    """A pipeline's DAG with each stage's state (JSON with the original's keys when piped)."""
    from labctl.commands._common import open_app, wants_json
    from labctl.pipelines.view import original_pipeline_view, pipeline_view, render_pipeline, resolve_pipeline
    from labctl.runs import to_json

    a = open_app()
    view = pipeline_view(a.db.conn, resolve_pipeline(a.db.conn, ref))
    typer.echo(to_json(original_pipeline_view(a.db.conn, view)) if wants_json(as_json) else render_pipeline(view))


@pipeline_app.command("ls")
def pipeline_ls(
    user: Annotated[str | None, typer.Option(help="Only this user's pipelines.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every user's.")] = False,
) -> None:
    """Recent pipelines."""
    from labctl.commands._common import open_app
    from labctl.pipelines.view import pipelines_list
    from labctl.table import format_table

    a = open_app()
    rows = [
        [p.id, p.name, p.status, p.user, p.created_at, p.finished_at]
        for p in pipelines_list(a.db.conn, None if all_ else (user or a.user))
    ]
    typer.echo(format_table(["PIPELINE", "NAME", "STATUS", "USER", "CREATED", "FINISHED"], rows))


def sweep_show(
    ref: Annotated[str, typer.Argument(help="Sweep id (or unambiguous prefix).")],
    metric: Annotated[str | None, typer.Option(help="Show this metric's final and best value.")] = None,
) -> None:
    """Each point: its parameter, state, and metrics (final values; --metric M: M's final and best)."""
    from labctl.commands._common import open_app
    from labctl.sweeps import render_sweep, sweep_rows

    a = open_app()
    typer.echo(render_sweep(*sweep_rows(a.db.conn, ref, metric)))


def register(app: typer.Typer) -> None:
    app.command("run-pipeline")(run_pipeline)
    app.command("run-sweep")(run_sweep)
    app.command("pipeline-show")(pipeline_show)
    pipeline_app.command("show")(pipeline_show)
    sweep_app.command("show")(sweep_show)
    app.add_typer(pipeline_app, name="pipeline")
    app.add_typer(sweep_app, name="sweep")
