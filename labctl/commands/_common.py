"""What the CLI's commands share: the global options, opening the app, failing with one line,
printing state changes, and waiting for runs (with an in-process agent when none is alive).

Light imports only: ``labctl --help`` loads this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from labctl.errors import InputError

if TYPE_CHECKING:
    from labctl.app import App
    from labctl.throttle import Scope
    from labctl.wait import Watch


class Global:
    """Options given before the command (``labctl --cluster PATH ...``)."""

    cluster: Path | None = None


def open_app() -> App:
    from labctl.app import open_app as open_with

    return open_with(Global.cluster)


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"labctl: error: {message}", err=True)
    raise typer.Exit(code)


def wants_json(as_json: bool | None) -> bool:
    """``--json``/``--no-json`` as given, else JSON when a script reads stdout (the original printed JSON there)."""
    import sys

    return as_json if as_json is not None else not sys.stdout.isatty()


def _details(status: str, info: dict[str, Any]) -> str:
    extra = []
    if info.get("exit_code") is not None:
        extra.append(f"exit_code={info['exit_code']}")
    if info.get("producer"):
        extra.append(f"peer={info['producer']}")
    if info.get("reason") and status != "cache_hit":
        extra.append(f"({info['reason']})")
    return " " + " ".join(extra) if extra else ""


#: run ends after which ``--wait`` shows the end of the job's log
FAILED_ENDS = frozenset({"failed", "timeout", "oom", "node_fail", "unknown_terminal"})
LOG_TAIL_LINES = 12


class Progress:
    """``--wait``'s lines: each state change with what the run is (stage, sweep index), n/m done and the
    time since submission; on a failure, the last lines of the job's log (on stderr)."""

    def __init__(self, a: App, labels: dict[str, str] | None = None, total: int = 1) -> None:
        import time

        self.a = a
        self.labels = labels or {}
        self.total = total
        self.done: set[str] = set()
        self.started = time.monotonic()

    def __call__(self, run_id: str, status: str, info: dict[str, Any]) -> None:
        import time

        from projections.runs import TERMINAL_STATES

        if status in TERMINAL_STATES:
            self.done.add(run_id)
        where = [self.labels[run_id]] if run_id in self.labels else []
        if self.total > 1:
            where.append(f"{len(self.done)}/{self.total} done")
        where.append(f"{time.monotonic() - self.started:.0f}s")
        typer.echo(f"{run_id}: {status}{_details(status, info)}  [{', '.join(where)}]")
        if status in FAILED_ENDS:
            self._log_tail(run_id)

    def _log_tail(self, run_id: str) -> None:
        from labctl.runs import log_path, show_run

        try:
            path = log_path(show_run(self.a.db.conn, run_id))
            lines = path.read_bytes().decode(errors="replace").splitlines()[-LOG_TAIL_LINES:] if path else []
        except (OSError, KeyError):
            return
        if lines:
            typer.echo(f"  last lines of {path}:", err=True)
            for line in lines:
                typer.echo(f"  | {line}", err=True)


def wait_for_runs(a: App, watch: Watch, scope: Scope) -> dict[str, str]:
    """Wait for the watched runs; when no agent is alive, run one in-process (limited to ``scope``) until they end.

    Ctrl-C stops the waiting and says what happens to the runs: with an agent elsewhere or on SLURM they go
    on; jobs this command's own agent started locally are cancelled with it.
    """
    from labctl.wait import wait

    try:
        final = wait(a, watch)
    except KeyboardInterrupt:
        _say_what_goes_on(a, watch, own_agent=False)
        raise typer.Exit(130) from None
    if final is not None:
        return final
    from labctl.agent import Agent
    from labctl.agents import new_agent_id
    from labctl.reactors import default_reactors

    agent_id = new_agent_id()
    agent = Agent(a, agent_id=agent_id, scope=scope, reactors=default_reactors(a, agent_id, a.user))
    agent.install_signal_handlers()
    ended = False

    def until() -> bool:
        nonlocal ended
        ended = watch.check()
        return ended

    agent.run(until=until)
    if not ended:  # stopped by a signal (Ctrl-C), not by the runs ending
        watch.check()
        _say_what_goes_on(a, watch, own_agent=True)
        raise typer.Exit(130)
    return watch.last


def _say_what_goes_on(a: App, watch: Watch, *, own_agent: bool) -> None:
    from labctl.runs import run_jobs
    from projections.runs import TERMINAL_STATES

    rows = run_jobs(a.db.conn, watch.run_ids)
    slurm = [
        f"{r.id} (job {r.job_id})" if r.job_id else r.id
        for r in rows
        if r.executor == "slurm" and r.status not in TERMINAL_STATES
    ]
    local = [f"{r.id} ({r.status})" for r in rows if r.executor != "slurm"]
    if slurm:
        typer.echo(
            f"stopped waiting; on SLURM these go on: {', '.join(slurm)} — `labctl cancel RUN` stops one", err=True
        )
    if local and own_agent:
        typer.echo(
            "stopped waiting; this command's agent stopped: the local jobs it ran were cancelled, runs it had "
            f"not started stay queued for `labctl agent`: {', '.join(local)}",
            err=True,
        )
    elif local:
        typer.echo(f"stopped waiting; a running `labctl agent` goes on with: {', '.join(local)}", err=True)


def print_doctor(a: App) -> None:
    """Where the database is, its versions, event count, checkpoints and lag; exit 1 on a problem."""
    from labctl.maintenance import doctor

    checks = doctor(a.db)
    width = max(len(c.name) for c in checks)
    for c in checks:
        typer.echo(f"{c.name:<{width}}  {c.value}{'' if c.ok else '  <-- problem'}")
    bad = [c for c in checks if not c.ok]
    if bad:
        fail(f"{bad[0].name}: {bad[0].value}", 1)


def check_choice(option: str, value: str | None, valid: Iterable[str], what: str) -> None:
    """Refuse a filter value that can match nothing, naming the valid ones (exit 2), instead of an empty table."""
    choices = sorted(set(valid))
    if value is not None and value not in choices:
        listed = ", ".join(choices) if choices else "(none yet)"
        raise InputError(f"{option} {value!r} is not {what}; expected one of: {listed}")
