"""``labctl serve``: the live web page."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        bind: Annotated[str, typer.Option(help="HOST:PORT to listen on (only there).")] = "127.0.0.1:8765",
    ) -> None:
        """A live web page of runs, pipelines and the event log, with a JSON API (Ctrl-C stops it)."""
        import logging

        from labctl.cli import _open
        from labctl.errors import UserError
        from labctl.web import parse_bind, run_server

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        host, port = parse_bind(bind)
        a = _open()
        a.db.conn  # noqa: B018 - connects once so the schema is created or upgraded before serving
        a.close()

        def started(bound_host: str, bound_port: int) -> None:
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            typer.echo(f"serving http://{shown}:{bound_port}/  (Ctrl-C to stop)")

        try:
            run_server(a.db.url, host, port, started=started)
        except OSError as exc:
            raise UserError(f"cannot listen on {bind}: {exc.strerror or exc}") from exc
