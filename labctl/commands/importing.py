"""``labctl import``: bring an original labctl registry (and its artifact store) into the log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("import")(import_cmd)


def import_cmd(
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="The original registry: a postgresql:// URL, or an old cluster.toml (its [postgres] section). "
            "Default: this database's own public schema.",
        ),
    ] = None,
    store: Annotated[
        list[Path] | None,
        typer.Option("--store", help="An artifact root whose _objects/*/*/.meta.json to read too (repeat)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be imported; write nothing.")] = False,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Re-hash content-addressed artifacts' bytes.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    batch: Annotated[int, typer.Option(help="Events appended per transaction.", min=1)] = 5000,
) -> None:
    """Import an original labctl registry: runs, artifacts, aliases, lineage, pipelines, evals, users.

    Safe to repeat (appends only what is new or changed since the last import) and to interrupt.
    """
    import msgspec

    from labctl.commands._common import open_app
    from labctl.importer import import_registry, print_report, resolve_source

    a = open_app()
    url, roots = resolve_source(source, a.db.url)
    report = import_registry(
        a.db.url, url, actor=a.user, stores=[*roots, *(store or [])], dry_run=dry_run, verify=verify, batch_events=batch
    )
    if as_json:
        typer.echo(msgspec.json.encode(report).decode())
    else:
        print_report(report, typer.echo)
