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
    from labctl.agents import Scope
    from labctl.app import App
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


def wants_json(as_json: bool) -> bool:
    """JSON when asked, or when a script reads stdout (the original printed JSON there); a view on a terminal."""
    import sys

    return as_json or not sys.stdout.isatty()


def echo_change(run_id: str, status: str, info: dict[str, Any]) -> None:
    extra = []
    if info.get("exit_code") is not None:
        extra.append(f"exit_code={info['exit_code']}")
    if info.get("producer"):
        extra.append(f"peer={info['producer']}")
    if info.get("reason") and status != "cache_hit":
        extra.append(f"({info['reason']})")
    typer.echo(f"{run_id}: {status}{' ' + ' '.join(extra) if extra else ''}")


def wait_for_runs(a: App, watch: Watch, scope: Scope) -> dict[str, str]:
    """Wait for the watched runs; when no agent is alive, run one in-process (limited to ``scope``) until they end."""
    from labctl.wait import wait

    final = wait(a, watch)
    if final is not None:
        return final
    from labctl.agent import Agent
    from labctl.agents import new_agent_id
    from labctl.reactors import default_reactors

    agent_id = new_agent_id()
    agent = Agent(a, agent_id=agent_id, scope=scope, reactors=default_reactors(a, agent_id, a.user))
    agent.install_signal_handlers()
    agent.run(until=watch.check)
    watch.check()
    return watch.last


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
