"""Metrics: log-metric (for shell jobs), metrics (table, JSON, plot), compare."""

from __future__ import annotations

from typing import Annotated

import typer

#: file types ``--plot FILE`` is meant for (anything else after ``--plot`` is the next argument)
IMAGE_SUFFIXES = (".svg", ".png", ".pdf", ".jpg", ".jpeg")


def plot_value_filled(argv: list[str]) -> list[str]:
    """``--plot`` without a FILE means the terminal: give it the value ``-`` so the option parser accepts it."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if arg == "--plot" and not following.lower().endswith(IMAGE_SUFFIXES):
            out.append("-")
    return out


def log_metric(
    pairs: Annotated[list[str], typer.Argument(help="NAME=VALUE pairs, e.g. loss=0.31 accuracy=0.92.")],
    step: Annotated[int | None, typer.Option(help="The step (default: the file's last step + 1).")] = None,
    run_dir: Annotated[str | None, typer.Option(help="The run dir (default: $LABCTL_RUN_DIR).")] = None,
) -> None:
    """From inside a job: append one line to $LABCTL_RUN_DIR/.lab/metrics.jsonl (no database needed)."""
    from labctl.metrics_file import log_metric_main

    argv = [*(["--step", str(step)] if step is not None else []), *(["--run-dir", run_dir] if run_dir else [])]
    code = log_metric_main([*argv, *pairs])
    if code:
        raise typer.Exit(code)


def metrics(
    refs: Annotated[list[str], typer.Argument(help="Runs (ids or prefixes); a sweep or pipeline id means its runs.")],
    metric: Annotated[list[str] | None, typer.Option("--metric", "-m", help="Only this metric (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON: one object per run and metric.")] = False,
    plot: Annotated[
        str | None,
        typer.Option(help="Draw the curves: alone in the terminal, or into FILE.svg.", metavar="[FILE.svg]"),
    ] = None,
) -> None:
    """Metrics the runs logged, by step (a cache hit shows its producer's)."""
    import msgspec

    from labctl.commands._common import open_app
    from labctl.errors import UserError
    from labctl.metrics import Series, metrics_of
    from labctl.metrics_view import expand_refs, metric_sources, metrics_table, run_labels, terminal_plot, write_plot
    from labctl.runs import to_json

    a = open_app()
    conn = a.db.conn
    run_ids = expand_refs(conn, refs)
    sources = metric_sources(conn, run_ids)
    found = metrics_of(conn, list(dict.fromkeys(sources.values())), metric)
    by_source: dict[str, list[Series]] = {}
    for s in found:
        by_source.setdefault(s.run_id, []).append(s)
    series: list[Series] = []
    for run_id in run_ids:
        series += [msgspec.structs.replace(s, run_id=run_id) for s in by_source.get(sources[run_id], [])]
    if not series:
        what = f" named {', '.join(metric)}" if metric else ""
        raise UserError(f"no metrics{what} logged by {', '.join(run_ids)} (a job logs them with labctl.log)")
    labels = run_labels(conn, run_ids, short=plot is not None)
    if as_json:
        typer.echo(
            to_json([{"run_id": s.run_id, "name": s.name, "steps": s.steps, "values": s.values} for s in series])
        )
    elif plot == "-":
        typer.echo(terminal_plot(series, labels))
    elif plot is not None:
        path = write_plot(series, labels, plot)
        typer.echo(f"wrote {path}")
    else:
        typer.echo(metrics_table(series, labels))


def compare(
    refs: Annotated[list[str], typer.Argument(help="Runs (ids or prefixes); a sweep or pipeline id means its runs.")],
    metric: Annotated[list[str] | None, typer.Option("--metric", "-m", help="Only this metric (repeatable).")] = None,
    only_differences: Annotated[bool, typer.Option("--diff", help="Only the keys whose values differ.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of the table.")] = False,
) -> None:
    """Runs side by side: params, resources, inputs, duration, final and best metrics; * marks differences."""
    from labctl.commands._common import open_app
    from labctl.compare import compare_runs, render_comparison
    from labctl.metrics_view import expand_refs, run_labels
    from labctl.runs import to_json

    a = open_app()
    conn = a.db.conn
    run_ids = expand_refs(conn, refs)
    comparison = compare_runs(conn, run_ids, metric)
    if as_json:
        import msgspec

        typer.echo(to_json([{**msgspec.to_builtins(r), "differs": r.differs} for r in comparison.rows]))
        return
    typer.echo(render_comparison(comparison, run_labels(conn, run_ids), only_differences=only_differences))


def register(app: typer.Typer) -> None:
    app.command("log-metric")(log_metric)
    app.command("metrics")(metrics)
    app.command("compare")(compare)
