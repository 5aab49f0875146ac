"""Eval policies by hand: evald once, eval ls, eval show."""

from __future__ import annotations

from typing import Annotated

import typer

evald_app = typer.Typer(no_args_is_help=True, help="Eval policies: run one pass by hand.")
eval_app = typer.Typer(no_args_is_help=True, help="Evals: metrics by step.")


@evald_app.command("once")
def evald_once(
    policy: Annotated[str, typer.Argument(help="Policy file, or a policy name in policies_dir.")],
    as_json: Annotated[
        bool | None, typer.Option("--json/--no-json", help="The counts as JSON (default: JSON when piped).")
    ] = None,
) -> None:
    """Submit the policy's eval for every matching checkpoint not evaluated yet."""
    from labctl.commands._common import open_app, wants_json
    from labctl.evals import find_policy, request_evals
    from labctl.runs import to_json

    a = open_app()
    done = request_evals(a, find_policy(a, policy))
    if wants_json(as_json):  # the original's report, and the eval runs
        typer.echo(to_json({**done.report(), "run_ids": done.run_ids}))
        return
    started = done.run_ids
    typer.echo(f"{len(started)} eval run(s) submitted" + (f": {', '.join(started)}" if started else ""))


@eval_app.command("ls")
def eval_ls(
    policy: Annotated[str | None, typer.Option(help="Only this policy.")] = None,
    run: Annotated[str | None, typer.Option(help="Only checkpoints of this training run.")] = None,
) -> None:
    """Every eval, by the swept parameter and step: params and metrics in columns of their own."""
    from labctl.commands._common import check_choice, open_app
    from labctl.eval_table import eval_table
    from labctl.evals import policies, recorded_policies
    from labctl.runs import resolve_run
    from labctl.table import format_table

    a = open_app()
    if policy is not None:
        known = recorded_policies(a.db.conn) | {p.name for p in policies(a)}
        check_choice("--policy", policy, known, "an eval policy")
    producer = resolve_run(a.db.conn, run) if run else None
    headers, rows = eval_table(a.db.conn, policy=policy, producer=producer)
    typer.echo(format_table(headers, rows))


@eval_app.command("show")
def eval_show(run: Annotated[str, typer.Argument(help="The training run whose checkpoints were evaluated.")]) -> None:
    """One training run's metrics by step."""
    from labctl.commands._common import open_app
    from labctl.evals import eval_rows, metrics_cell
    from labctl.runs import resolve_run
    from labctl.table import format_table

    a = open_app()
    producer = resolve_run(a.db.conn, run)
    rows = eval_rows(a.db.conn, producer=producer)
    typer.echo(f"{producer}: {len(rows)} eval(s)")
    typer.echo(
        format_table(
            ["STEP", "POLICY", "STATE", "METRICS"], [(e.step, e.policy, e.state, metrics_cell(e.metrics)) for e in rows]
        )
    )


def register(app: typer.Typer) -> None:
    app.add_typer(evald_app, name="evald")
    app.add_typer(eval_app, name="eval")
