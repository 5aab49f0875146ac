"""The labctl command line: each command parses, calls one library function, prints.

Heavy modules are imported inside the commands so ``labctl --help`` and
``labctl --version`` start fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from labctl import __version__
from labctl.commands._common import (
    Global,
    Progress,
    check_choice,
    fail,
    open_app,
    print_doctor,
    wait_for_runs,
)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    help="Run and track ML experiments; every fact lives in an append-only event log in Postgres.",
)
db_app = typer.Typer(no_args_is_help=True, help="The database: create/upgrade the schema, stop the embedded server.")
audit_app = typer.Typer(no_args_is_help=True, help="Check that the log and the read models can be trusted.")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"labctl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    cluster: Annotated[
        Path | None, typer.Option("--cluster", help="cluster.toml to use (else $LABCTL_CLUSTER, XDG path, local)")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    Global.cluster = cluster


# ------------------------------------------------------------------ database


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema, roles and grants (idempotent); beside an original labctl registry too."""
    from labctl.db import upgrade

    a = open_app()
    before, after = upgrade(a.db, beside_original=True)
    if before == after:
        typer.echo(f"schema is current (version {after})")
    elif before is None:
        typer.echo(f"created schema version {after}")
    else:
        typer.echo(f"upgraded schema from version {before} to {after}")


@db_app.command("url")
def db_url() -> None:
    """Print the database URL in use (starting the embedded server if needed)."""
    typer.echo(open_app().db.url)


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded Postgres (it starts again on the next command)."""
    from labctl.db import stop_embedded

    typer.echo("stopped the embedded Postgres" if stop_embedded() else "the embedded Postgres is not running")


@app.command()
def doctor() -> None:
    """Where the database is, its versions, event count, checkpoints and lag."""
    print_doctor(open_app())


# ----------------------------------------------------------------- event log


@app.command("events")
def events_cmd(
    after: Annotated[int, typer.Option(help="Only events after this position.")] = 0,
    stream: Annotated[str | None, typer.Option(help="Only this stream.")] = None,
    type_: Annotated[list[str] | None, typer.Option("--type", help="Only these event types.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (without --follow).")] = 1000,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """The event log, oldest first."""
    import events
    from events.follow import follow as follow_log
    from labctl.eventlog import print_events
    from labctl.maintenance import check_position

    check_position(after, "--after")
    if check_position(limit, "--limit") == 0:
        fail("--limit 0: expected at least 1", 2)
    a = open_app()
    page = events.read_all(a.db.conn, after, limit, stream=stream, types=type_)
    print_events(page, as_json=as_json)
    if not follow:
        last = page[-1].position if page else after
        if len(page) == limit and events.read_all(a.db.conn, last, 1, stream=stream, types=type_):
            typer.echo(f"more: --after {last}", err=True)  # a page, not the whole log: say how to go on
        return
    position = page[-1].position if page else after
    try:
        for batch in follow_log(a.db.url, position):
            print_events(
                [e for e in batch if (stream is None or e.stream == stream) and (not type_ or e.type in type_)],
                as_json=as_json,
            )
    except KeyboardInterrupt:
        pass


@app.command()
def history(ref: Annotated[str, typer.Argument(help="A run/artifact/pipeline id (or prefix) or a stream.")]) -> None:
    """One entity's timeline."""
    from labctl.eventlog import history as load_history
    from labctl.eventlog import history_line

    a = open_app()
    stream, found = load_history(a.db.conn, ref)
    typer.echo(f"{stream}  ({len(found)} events)")
    for e in found:
        typer.echo(history_line(e))


@app.command()
def replay(
    until: Annotated[
        str | None, typer.Option(help="Rebuild the world as of a POSITION or ISO timestamp, read-only.")
    ] = None,
) -> None:
    """Rebuild every read model from the log (atomically swapped in), or as of a past moment."""
    import events
    import projections
    from labctl.maintenance import parse_until
    from labctl.progress import ProgressBar

    a = open_app()
    conn = a.db.conn
    if until is None:
        with ProgressBar("replaying", events.last_position(conn)) as bar:
            report = projections.replay_live(conn, progress=bar, tables=bar.tables)
        # (End to end: the server computes the tables after and beside the scan of the log.)
        rate = report.events / report.total_seconds if report.total_seconds else 0
        typer.echo(
            f"rebuilt {report.events} events into the live read models in {report.total_seconds:.2f}s "
            f"({rate:,.0f} events/s); now at position {report.position}"
        )
        return
    position = parse_until(conn, until)
    with ProgressBar("replaying", position) as bar:
        report = projections.replay_as_of(conn, position, progress=bar, tables=bar.tables)
    typer.echo(f"built the read models as of position {position} ({report.events} events) into schema {report.schema}")
    typer.echo(f"query it with:  SET search_path = {report.schema}, labctl;  or  labctl status --as-of {position}")


@audit_app.command("verify")
def audit_verify(
    full: Annotated[
        bool, typer.Option("--full", help="Re-check the whole chain and diff the read models with a rebuild.")
    ] = False,
    expect: Annotated[
        str | None,
        typer.Option(help="POSITION:HASH from `labctl audit head`: the log must still hold exactly that prefix."),
    ] = None,
) -> None:
    """Recompute the hash chain from the last verified position (--full: from the start, and the read models)."""
    from labctl.maintenance import audit, parse_anchor

    anchor = parse_anchor(expect) if expect is not None else None
    a = open_app()
    report = audit(a.db.conn, full=full, expect=anchor)
    for problem in report.problems:
        typer.echo(problem)
    if report.broken_at is not None:
        typer.echo(f"hash chain broken at position {report.broken_at}")
    for d in report.differences:
        detail = "; ".join(f"{c}: live={v[0]!r} log={v[1]!r}" for c, v in d.columns.items())
        typer.echo(f"{d.table} {d.key}: {d.problem}{' (' + detail + ')' if detail else ''}")
    if report.clean:
        since = f" after position {report.checked_after}" if report.checked_after else ""
        models = ", read models equal a rebuild" if report.models_checked else ""
        typer.echo(f"ok: {report.events_checked} events{since} chained up to position {report.position}{models}")
        return
    first = (
        f"hash chain broken at position {report.broken_at}"
        if report.broken_at is not None
        else report.problems[0]
        if report.problems
        else f"{len(report.differences)} read-model rows differ from a rebuild"
    )
    fail(f"audit failed: {first}", 1)


@audit_app.command("objects")
def audit_objects_cmd() -> None:
    """Re-hash every stored object and report those whose bytes changed since they were registered."""
    from labctl.maintenance import audit_objects

    report = audit_objects(open_app().db.conn)
    for c in report.changed:
        typer.echo(f"{c.artifact_id} {c.path}: {c.problem}")
    if report.changed:
        fail(f"audit failed: {len(report.changed)} of {report.checked} stored objects changed", 1)
    typer.echo(f"ok: {report.checked} stored objects match their hashes ({report.seconds:.1f}s)")


@audit_app.command("head")
def audit_head() -> None:
    """Print POSITION:HASH of the last event: keep it elsewhere and check it later with `verify --expect`."""
    from labctl.maintenance import anchor

    typer.echo(anchor(open_app().db.conn))


# ---------------------------------------------------------------------- runs


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe file (TOML).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override params.K=V, args.K=V or env.K=V.")] = None,
    executor: Annotated[str | None, typer.Option(help="local or slurm (default: the cluster's).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show state changes until the run ends.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Run even if an identical run succeeded.")] = False,
    explain_cache: Annotated[
        bool, typer.Option("--explain-cache", help="Print what the cache key covers (recipe, code, inputs, files).")
    ] = False,
) -> None:
    """Submit one run of a recipe (prints run_id, job_id, run_dir)."""
    from labctl.files import load_recipe
    from labctl.submit import apply_overrides, submit
    from labctl.throttle import Scope
    from labctl.wait import Watch

    recipe_obj = apply_overrides(load_recipe(recipe), set_ or [])
    a = open_app()
    result = submit(a, recipe_obj, recipe, executor=executor, no_cache=no_cache)
    if result.status == "submitted" and (executor or a.executor) == "slurm":
        from labctl.slurm_runs import holder_id, submit_queued

        result.job_id = submit_queued(a, a.slurm_executor(), holder_id(), run_ids=[result.run_id]).get(result.run_id)
    from labctl.runs import shown_job_id

    typer.echo(f"run_id: {result.run_id}")
    typer.echo(f"job_id: {shown_job_id(executor or a.executor, result.run_id, result.job_id, result.status)}")
    typer.echo(f"run_dir: {result.run_dir}")
    # the original's lines for a cache hit and for a run that waits on an identical one in flight
    if result.status == "cache_hit":
        typer.echo("cache_hit: true (reused prior outputs; no SLURM job submitted)")
    if result.status == "awaiting_peer" and result.producer_run_id:
        typer.echo(
            f"follower_of: {result.producer_run_id} (singleflight: leader run is already computing this "
            "cache_key; this row will resolve to cache_hit when the leader terminates)"
        )
    typer.echo(f"status: {result.status}" + (f" (peer {result.producer_run_id})" if result.producer_run_id else ""))
    if result.status == "cache_hit" and result.producer_run_id:
        from labctl.runs import reuse_line

        typer.echo(reuse_line(a.db.conn, result.producer_run_id))
    if explain_cache:
        for line in result.explanation:
            typer.echo(line)
    if not wait:
        if result.status in ("submitted", "awaiting_peer") and (executor or a.executor) == "local":
            from labctl.wait import agent_for

            if not agent_for(a):
                typer.echo(
                    "note: no agent is running your local runs; start one with `labctl agent` "
                    "(or submit with --wait to run it now)",
                    err=True,
                )
        return
    scope = Scope(run_ids=frozenset({result.run_id, *([result.producer_run_id] if result.producer_run_id else [])}))
    final = wait_for_runs(a, Watch(a, [result.run_id], Progress(a)), scope)
    state = final.get(result.run_id)
    if state not in ("succeeded", "cache_hit"):
        raise typer.Exit(1)


@app.command()
def status(
    user: Annotated[str | None, typer.Option(help="Only this user's runs (default: yours).")] = None,
    state: Annotated[str | None, typer.Option(help="Only runs in this state.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every user and the whole history.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Redraw whenever something changes.")] = False,
    as_of: Annotated[str | None, typer.Option(help="Show the world as of a POSITION or ISO timestamp.")] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="Add columns: params (those that differ), params.KEY, args.KEY, metrics (last values), "
            "metrics.NAME, duration; comma-separated."
        ),
    ] = None,
) -> None:
    """Runs: your unfinished ones and the latest 20 (``--all``: everything)."""
    from labctl import runs
    from labctl.table import format_table
    from projections.runs import RUN_STATES

    check_choice("--state", state, RUN_STATES, "a run state")
    a = open_app()
    conn = a.db.conn
    who = None if all_ else (user or a.user)
    extra = None
    if columns is not None:
        from labctl.run_columns import extra_columns, parse_columns

        extra = parse_columns(columns)

    def draw() -> None:
        rows = runs.status_rows(conn, user=who, state=state, everything=all_)
        table = [
            [
                r.id,
                r.name,
                r.status,
                r.exit_code,
                r.user,
                r.created_at,
                (r.stage_name and f"{r.pipeline_id}/{r.stage_name}") or "",
            ]
            for r in rows
        ]
        headers = ["RUN", "NAME", "STATUS", "EXIT", "USER", "CREATED", "STAGE"]
        if extra is not None:
            more, cells = extra_columns(conn, [(r.id, r.started_at, r.finished_at) for r in rows], extra)
            headers += more
            table = [[*t, *cells[r.id]] for t, r in zip(table, rows, strict=True)]
        typer.echo(format_table(headers, table))

    def show() -> None:
        if as_json:
            runs.write_status_json(conn, sys.stdout.buffer, user=who, state=state, everything=all_)
        else:
            draw()

    if as_of is not None:
        import projections
        from labctl.maintenance import parse_until, schema_exists
        from labctl.progress import ProgressBar

        position = parse_until(conn, as_of, "--as-of")
        # Reading leaves nothing behind: the snapshot is built in a transaction that is rolled back
        # (one kept by `replay --until` is used as it is).
        with conn.transaction(force_rollback=True):
            if not schema_exists(conn, f"asof_{position}"):
                with ProgressBar("replaying", position) as bar:
                    projections.replay_as_of(conn, position, progress=bar, tables=bar.tables)
            runs.set_search_path(conn, f"asof_{position}")
            show()
        return
    if (behind := runs.read_model_lag(conn)) > 0:
        noun = "event" if behind == 1 else "events"
        typer.echo(
            f"note: these runs are {behind:,} {noun} behind the log (an import stopped before it rebuilt "
            "them?): `labctl replay` brings them up to date",
            err=True,
        )
    if as_json:
        show()
        return

    draw()
    if watch:
        from events.follow import follow

        try:
            for _ in follow(a.db.url, __import__("events").last_position(conn)):
                typer.echo("\x1b[2J\x1b[H", nl=False)
                draw()
        except KeyboardInterrupt:
            pass


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="Run, artifact or pipeline id (or unambiguous prefix).")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON (always: the original's run view and ours).")] = False,
) -> None:
    """One run as JSON, with the original's run view (run, aliases, eval_requests) beside ours; an artifact
    (with its eval result) or a pipeline likewise."""
    from labctl import runs

    a = open_app()
    if ref.startswith("artifact_"):
        from labctl.artifact_queries import artifact_detail, resolve_artifact

        detail = artifact_detail(a.db.conn, resolve_artifact(a.db.conn, a.user, ref, include_removed=True))
        typer.echo(runs.to_json(detail))
    elif ref.startswith("pipeline_"):
        from labctl.pipelines.view import pipeline_view, resolve_pipeline

        typer.echo(runs.to_json(pipeline_view(a.db.conn, resolve_pipeline(a.db.conn, ref))))
    else:
        typer.echo(runs.to_json(runs.show_run(a.db.conn, runs.resolve_run(a.db.conn, ref))))


@app.command("log")
def log_cmd(
    ref: Annotated[str, typer.Argument(help="Run id (or unambiguous prefix).")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
) -> None:
    """A run's stdout and stderr."""
    import time

    from labctl import runs

    a = open_app()
    run_id = runs.resolve_run(a.db.conn, ref)
    path = None
    offset = 0
    while True:
        if path is None or not path.exists():  # a SLURM log is named after its job id, known once submitted
            shown = runs.show_run(a.db.conn, run_id)["log"]
            path = Path(shown) if shown else None
        if path is not None and path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
                offset += len(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        if not follow or runs.is_terminal(a.db.conn, run_id):
            if follow and path is not None and path.exists() and path.stat().st_size > offset:
                continue
            break
        time.sleep(0.2)


@app.command()
def cancel(
    refs: Annotated[list[str], typer.Argument(help="Run or pipeline ids (or unambiguous prefixes).")],
    force: Annotated[bool, typer.Option("--force", help="Cancel runs of other users too.")] = False,
) -> None:
    """Cancel runs (or every unfinished run of a pipeline)."""
    from labctl import runs

    a = open_app()
    ids = []
    for ref in refs:
        if ref.startswith("pipeline_"):
            from labctl.pipelines.view import resolve_pipeline, unfinished_runs

            ids += unfinished_runs(a.db.conn, resolve_pipeline(a.db.conn, ref))
        else:
            ids.append(runs.resolve_run(a.db.conn, ref))
    from labctl.cancel import cancel_runs

    for result in cancel_runs(a, ids, force=force):
        typer.echo(f"{result.run_id}: {result.outcome}")


@app.command("hash-outputs")
def hash_outputs_cmd(
    run_dir: Annotated[Path, typer.Option("--run-dir", help="The run directory (has .lab/context.json).")],
    force: Annotated[bool, typer.Option("--force", help="Hash again although the outputs were hashed.")] = False,
) -> None:
    """Hash a finished run's outputs where they were written (.lab/output_hashes.json)."""
    from labctl.artifacts import ContextError, hash_outputs

    manifest = run_dir / ".lab" / "output_hashes.json"
    if manifest.exists() and not force:
        # Registration may already have used it (and moved the outputs into the store): keep what it read.
        fail(f"{manifest} exists: this run's outputs were hashed already (--force hashes them again)", 1)
    try:
        hashes = hash_outputs(run_dir)
    except ContextError as exc:
        fail(str(exc), 2)
    for role, digest in sorted(hashes.items()):
        typer.echo(f"{role}: {digest}")


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="A recipe, pipeline, eval policy or cluster.toml.")],
    strict: Annotated[bool, typer.Option("--strict", help="A key labctl does not know is an error.")] = False,
) -> None:
    """Check a file without touching the database (unknown keys: a warning, or an error with --strict)."""
    from labctl.files import validate_path

    typer.echo(validate_path(path, strict=strict))


@app.command()
def reconcile() -> None:
    """One reconcile cycle by hand: one sacct call for all active SLURM jobs, then pipelines advance
    (children of runs that ended are submitted); prints JSON counts."""
    from labctl.artifact_queries import registered_by
    from labctl.pipelines.advance import advance, running_pipelines
    from labctl.runs import to_json
    from labctl.slurm_runs import holder_id, recover_intents, submit_queued
    from labctl.slurm_runs import reconcile as reconcile_once

    a = open_app()
    executor = a.slurm_executor()
    me = a.user  # your own runs only: sbatch would run anyone else's under your account
    submitted = submit_queued(a, executor, holder_id(), user=me)
    recovered = recover_intents(a, executor, holder_id(), user=me)
    report = reconcile_once(a, executor, user=me)
    advanced = sum(advance(a, p) for p in running_pipelines(a.db.conn, me))
    submitted |= submit_queued(a, executor, holder_id(), user=me)  # children the pipelines just released
    registered = registered_by(a.db.conn, report.ended)
    counts = {
        # the original's keys: runs whose state changed, artifacts their ends registered, runs that could not be
        # reconciled (none here: a cycle that fails stops with an error)
        "runs_reconciled": report.started + report.finished,
        "artifacts_registered": registered,
        "runs_failed": 0,
        "submitted": len(submitted),
        "recovered": recovered,
        "active": report.active,
        "started": report.started,
        "finished": report.finished,
        "sacct_calls": report.sacct_calls,
        "accounting_ok": report.accounting_ok,
        "metric_points": report.metric_points,
        "pipelines_advanced": advanced,
    }
    typer.echo(to_json(counts))


@app.command()
def agent(
    slots: Annotated[int | None, typer.Option(help="Local jobs at once (default: cores).")] = None,
    drain: Annotated[bool, typer.Option("--drain", help="Exit once nothing is left to run or react to.")] = False,
    service: Annotated[
        bool, typer.Option("--service", help="Act for every user (only as the cluster's [dispatch] service_user).")
    ] = False,
) -> None:
    """Run your local jobs and reactors (pipelines, sweeps, evals, SLURM reconcile) until stopped."""
    import logging

    from labctl.agent import Agent
    from labctl.agents import check_service, new_agent_id
    from labctl.reactors import default_reactors

    a = open_app()
    if service:
        check_service(a)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent_id = new_agent_id()
    serves = None if service else a.user
    worker = Agent(a, agent_id=agent_id, slots=slots, service=service, reactors=default_reactors(a, agent_id, serves))
    worker.install_signal_handlers()
    typer.echo(
        f"agent {worker.id} for {'every user (service)' if service else a.user}: {worker.slots} slots, "
        f"{worker.capacity.cpus} cpus, {worker.capacity.mem_mb} MB, gpus [{', '.join(worker.capacity.gpus)}], "
        f"reactors: {', '.join(r.name for r in worker.reactors) or 'none'}"
    )
    if drain:
        settled = []

        def idle_twice() -> bool:
            # Idle on two ticks in a row: an eval requested by the last event has had its turn.
            settled.append(worker.idle())
            return settled[-2:] == [True, True]

        worker.run(until=idle_twice)
    else:
        worker.run()


# ----------------------------------------------------------- command groups


def _register_groups() -> None:
    import importlib
    import pkgutil

    import labctl.commands

    for info in sorted(pkgutil.iter_modules(labctl.commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue  # shared helpers, not a command group
        module = importlib.import_module(f"labctl.commands.{info.name}")
        module.register(app)


_register_groups()


# --------------------------------------------------------------------- main


def main() -> None:
    from labctl.errors import UserError

    try:
        from labctl.commands.metrics import plot_value_filled
        from labctl.files.errors import FileFormatError

        sys.argv = plot_value_filled(sys.argv)
        app()
    except FileFormatError as exc:
        typer.echo(f"labctl: error: {exc}", err=True)
        sys.exit(2)
    except UserError as exc:
        typer.echo(f"labctl: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        from events import EventStoreError

        if isinstance(exc, EventStoreError):
            typer.echo(f"labctl: error: {exc}", err=True)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
