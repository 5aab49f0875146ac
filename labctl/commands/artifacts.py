"""Artifact commands: register-external, artifacts, alias set/ls/rm, lineage, gc."""

from __future__ import annotations

from typing import Annotated

import typer

alias_app = typer.Typer(no_args_is_help=True, help="Your names for artifacts (recorded, and linked on disk).")


def register(app: typer.Typer) -> None:
    app.command("register-external")(register_external)
    app.command("artifacts")(artifacts)
    app.command("lineage")(lineage)
    app.command("gc")(gc)
    app.add_typer(alias_app, name="alias")


def register_external(
    alias: Annotated[str, typer.Option("--alias", help="Your alias for it.")],
    path: Annotated[str, typer.Option("--path", help="An existing file or directory (left where it is).")],
    kind: Annotated[str, typer.Option("--kind", help="Artifact kind (its root holds the alias link).")] = "external",
) -> None:
    """Record a file or directory labctl did not produce, under an alias (it is never moved or collected)."""
    from labctl.commands._common import open_app
    from labctl.external import register_external as register_path

    r = register_path(open_app(), alias=alias, path=path, kind=kind)
    typer.echo(f"{'registered' if r.new else 'already registered'} {r.artifact_id} ({r.kind}) at {r.path}")
    typer.echo(f"alias {r.alias} -> {r.artifact_id}" + (f"  (link {r.link})" if r.link else ""))


def artifacts(
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    user: Annotated[str | None, typer.Option(help="Only this user's artifacts (default: everyone's).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include artifacts whose bytes gc removed.")] = False,
    limit: Annotated[int, typer.Option(help="The newest this many (0: no limit).")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Artifacts, oldest first: id, kind, aliases, producing run, created, path."""
    import msgspec

    from labctl.artifact_queries import artifact_kinds, list_artifacts, short_alias
    from labctl.commands._common import check_choice, open_app
    from labctl.table import format_table

    a = open_app()
    if kind is not None:
        known = artifact_kinds(a.db.conn) | set(a.config.filesystem.artifact_roots)
        check_choice("--kind", kind, known, "an artifact kind")
    found = list_artifacts(a.db.conn, kind=kind, user=user, include_removed=all_, limit=limit or None)
    if as_json:
        for art in found:
            typer.echo(msgspec.json.encode(art).decode())
        return
    headers = ["ID", "KIND", "ALIASES", "PRODUCER", "CREATED", *(["REMOVED"] if all_ else []), "PATH"]
    rows = [
        [
            art.id,
            art.kind,
            ",".join(short_alias(x, a.user) for x in art.aliases) or None,
            art.producer_run_id,
            art.created_at,
            *([art.removed_at] if all_ else []),
            art.path,
        ]
        for art in found
    ]
    typer.echo(format_table(headers, rows))


@alias_app.command("set")
def alias_set(
    name: Annotated[str, typer.Argument(help="The alias (yours).")],
    ref: Annotated[str, typer.Argument(help="An artifact id (or prefix) or another alias (name or user/name).")],
) -> None:
    """Point an alias at an artifact."""
    from labctl.aliases import set_alias
    from labctl.commands._common import open_app

    change = set_alias(open_app(), name, ref)
    typer.echo(f"alias {change.alias} -> {change.artifact_id}" + (f"  (link {change.link})" if change.link else ""))


@alias_app.command("ls")
def alias_ls(
    user: Annotated[str | None, typer.Option(help="This user's aliases (default: yours).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every user's aliases.")] = False,
) -> None:
    """Aliases and what they point at."""
    from labctl.aliases import list_aliases
    from labctl.commands._common import open_app
    from labctl.table import format_table

    a = open_app()
    found = list_aliases(a.db.conn, user=None if all_ else (user or a.user))
    rows = [[e.user, e.alias, e.artifact_id, e.kind, e.set_at, e.path] for e in found]
    typer.echo(format_table(["USER", "ALIAS", "ARTIFACT", "KIND", "SET", "PATH"], rows))


@alias_app.command("rm")
def alias_rm(name: Annotated[str, typer.Argument(help="Your alias to remove.")]) -> None:
    """Remove an alias (the artifact stays; gc may collect it once nothing refers to it)."""
    from labctl.aliases import remove_alias
    from labctl.commands._common import open_app

    change = remove_alias(open_app(), name)
    typer.echo(f"removed alias {change.alias} (was {change.artifact_id})")


def lineage(
    ref: Annotated[str, typer.Argument(help="A run id, an artifact id (or their prefixes) or an alias.")],
    depth: Annotated[int, typer.Option(help="Follow at most this many steps each way.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="The two trees as JSON.")] = False,
) -> None:
    """Where a run or artifact came from (upstream) and what came of it (downstream)."""
    from labctl.commands._common import open_app
    from labctl.lineage import lineage as trace
    from labctl.lineage import render_lineage
    from labctl.runs import to_json

    a = open_app()
    result = trace(a.db.conn, a.user, ref, depth=depth)
    if as_json:
        typer.echo(to_json(result.to_json()))
        return
    for line in render_lineage(result):
        typer.echo(line)


def gc(
    older_than: Annotated[str, typer.Option("--older-than", help="Only artifacts created longer ago (30d, 12h).")] = (
        "30d"
    ),
    yes: Annotated[bool, typer.Option("--yes", help="Remove them (without it: only list).")] = False,
    terminal_snapshots: Annotated[
        bool,
        typer.Option(
            "--terminal-snapshots",
            help="Instead: delete the source/ snapshot of your runs that ended (as the original).",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Every user's artifacts, and a retention under a minute.")
    ] = False,
) -> None:
    """Remove the bytes of artifacts nothing needs: no alias, no unfinished reader, not external, old enough."""
    from labctl.commands._common import open_app
    from labctl.gc import gc as collect
    from labctl.gc import human_bytes, parse_age

    if terminal_snapshots:
        from datetime import timedelta

        from labctl.snapshots import remove_terminal_sources

        a = open_app()
        typer.echo(f"removed_snapshots: {remove_terminal_sources(a.db.conn, a.user, timedelta(0))}")
        return

    age = parse_age(older_than)
    report = collect(open_app(), older_than=age, remove=yes, force=force)
    for c in report.artifacts:
        typer.echo(f"{c.artifact_id}  {c.kind:<12}  {human_bytes(c.size_bytes):>10}  {c.path}")
    n = len(report.artifacts)
    size = f"{human_bytes(report.bytes_freed)} ({report.bytes_freed:,} bytes)"
    if report.removed:
        typer.echo(f"removed {n} artifact{'s' if n != 1 else ''}, freed {size}")
        if report.invalidated_cache_keys:
            keys = len(report.invalidated_cache_keys)
            typer.echo(f"invalidated {keys} cache entr{'ies' if keys != 1 else 'y'}: identical runs will recompute")
    else:
        typer.echo(f"would remove {n} artifact{'s' if n != 1 else ''}, freeing {size} (dry run: pass --yes to remove)")
