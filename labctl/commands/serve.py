"""``labctl serve``: the dashboard and its JSON API."""

from __future__ import annotations

import os
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        bind: Annotated[str, typer.Option(help="HOST:PORT to listen on (only there).")] = "127.0.0.1:8765",
        token: Annotated[
            str | None,
            typer.Option(help="Require this token (else $LABCTL_WEB_TOKEN); needed for any non-loopback --bind."),
        ] = None,
        allow_host: Annotated[
            list[str] | None,
            typer.Option("--allow-host", help="Another host name browsers may use to reach it (repeatable)."),
        ] = None,
    ) -> None:
        """The dashboard: runs, pipelines, evals, compare, artifacts and the log, live; JSON under /api."""
        import logging

        from labctl.commands._common import open_app
        from labctl.errors import InputError, UserError
        from labctl.web import is_loopback, parse_bind, run_server

        host, port = parse_bind(bind)
        secret = token or os.environ.get("LABCTL_WEB_TOKEN") or None
        if secret is not None and (len(secret) < 16 or not secret.isprintable() or " " in secret):
            raise InputError("--token: use at least 16 printable characters without spaces")
        if not is_loopback(host):
            if secret is None:
                raise InputError(
                    f"--bind {bind}: listening beyond this machine needs a token "
                    "(--token or $LABCTL_WEB_TOKEN, e.g. `openssl rand -hex 16`)"
                )
            typer.echo(
                f"warning: serving on {host}, reachable from other machines; anyone with the token can read "
                "every run, recipe and log line (prefer 127.0.0.1 and an SSH tunnel)",
                err=True,
            )
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        a = open_app()
        a.db.conn  # noqa: B018 - connects once so the schema is created or upgraded before serving
        cluster = {"name": a.config.name, "runs_base": str(a.config.filesystem.runs_base)}
        a.close()

        def started(bound_host: str, bound_port: int) -> None:
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            suffix = f"/?token={secret}" if secret else "/"
            typer.echo(f"serving http://{shown}:{bound_port}{suffix}  (Ctrl-C to stop)")

        try:
            run_server(
                a.db.url, host, port, started=started, token=secret, extra_hosts=allow_host or [], cluster=cluster
            )
        except OSError as exc:
            raise UserError(f"cannot listen on {bind}: {exc.strerror or exc}") from exc
