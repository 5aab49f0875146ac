"""Setup commands: ``init`` (write cluster.toml), ``admin add-user``, ``service`` (systemd user units)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

if TYPE_CHECKING:
    from labctl.setup import SchedulerChoice, ServiceName

admin_app = typer.Typer(no_args_is_help=True, help="Cluster administration: prepare users' directories.")
service_app = typer.Typer(
    no_args_is_help=True, help="Run the agent (--agent) or the web page (--ui) as systemd user services."
)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.add_typer(admin_app, name="admin")
    app.add_typer(service_app, name="service")


def init(
    name: Annotated[
        str | None, typer.Option(help="The cluster's name (default: local, or this host for SLURM).")
    ] = None,
    runs_base: Annotated[str | None, typer.Option(help="Directory holding every user's run dirs.")] = None,
    artifact_root: Annotated[
        list[str] | None, typer.Option("--artifact-root", help="KIND=PATH: where artifacts of a kind live (repeat).")
    ] = None,
    output_root: Annotated[
        list[str] | None, typer.Option("--output-root", help="TYPE=PATH: where outputs of a type are written (repeat).")
    ] = None,
    repo: Annotated[list[str] | None, typer.Option("--repo", help="NAME=PATH of a git checkout (repeat).")] = None,
    shared_group: Annotated[str | None, typer.Option(help="Unix group given to shared directories.")] = None,
    database_url: Annotated[str | None, typer.Option(help="Postgres URL (default: the embedded one).")] = None,
    scheduler: Annotated[str, typer.Option(help="auto (SLURM if sinfo answers, else local), local or slurm.")] = "auto",
    use: Annotated[
        Path | None,
        typer.Option("--use", help="Adopt this config: a link to it (a copy with --copy-config or changes)."),
    ] = None,
    join: Annotated[Path | None, typer.Option("--join", help="Link to this shared config (follow its edits).")] = None,
    migrate_from: Annotated[
        Path | None,
        typer.Option("--migrate-from", help="Adapt another cluster's config: its settings, your paths and name."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write here (default: --cluster, $LABCTL_CLUSTER, the XDG path).")
    ] = None,
    copy_config: Annotated[
        bool, typer.Option("--copy-config", help="With --use/--join: copy the file instead of linking to it.")
    ] = False,
    no_detect: Annotated[bool, typer.Option("--no-detect", help="Do not probe for SLURM.")] = False,
    no_create_dirs: Annotated[
        bool, typer.Option("--no-create-dirs", help="Do not create your run and artifact directories.")
    ] = False,
    no_agent: Annotated[bool, typer.Option("--no-agent", help="Do not install the agent's systemd user unit.")] = False,
    no_doctor: Annotated[
        bool, typer.Option("--no-doctor", help="Do not touch the database (schema, doctor) now.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Write without asking.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing config.")] = False,
) -> None:
    """Write a cluster.toml (SLURM if found, else the local profile), create your directories, install the
    agent unit, create the schema and run doctor (each step can be skipped)."""
    from labctl import setup
    from labctl.commands._common import Global, fail, open_app, print_doctor
    from labctl.db import labctl_home, open_database, upgrade
    from labctl.files import ARTIFACT_KINDS, OUTPUT_TYPES, load_cluster_config

    if scheduler not in ("auto", "local", "slurm"):
        fail(f"--scheduler {scheduler!r}: expected auto, local or slurm", 2)
    choice = cast("SchedulerChoice", scheduler)
    if sum(p is not None for p in (use, join, migrate_from)) > 1:
        fail("--use, --join and --migrate-from exclude each other: adopt, link to or adapt one config", 2)
    if copy_config and not (use or join):
        fail("--copy-config goes with --use or --join", 2)
    roots = setup.parse_assignments(artifact_root or [], "--artifact-root", ARTIFACT_KINDS)
    outputs = setup.parse_assignments(output_root or [], "--output-root", OUTPUT_TYPES)
    repos = setup.parse_assignments(repo or [], "--repo")
    dest = output.expanduser() if output is not None else setup.config_destination(Global.cluster)
    setup.check_can_write(dest, force=force)
    changes = bool(name or runs_base or roots or outputs or repos or shared_group or database_url)
    adopted = use or join

    if adopted and not changes and scheduler == "auto":
        shared, _ = setup.shared_config(adopted, dest)
        verb = "copy" if copy_config else "link"
        typer.echo(
            f"{dest} -> {shared}  ({'a copy' if copy_config else 'a link: edits to the shared file apply here'})"
        )
        if not yes and not typer.confirm(f"{verb.capitalize()} it?", default=True):
            fail("nothing written", 1)
        if copy_config:
            setup.copy_config(dest, shared, force=force)
            typer.echo(f"copied {shared} -> {dest}")
        else:
            setup.link_config(dest, shared, force=force)
            typer.echo(f"linked {dest} -> {shared}")
    elif join:
        fail("--join follows the shared file as it is; use --use to copy it with changes", 2)
    else:
        if use or migrate_from:
            source_path = use or migrate_from
            assert source_path is not None
            shared, base = setup.shared_config(source_path, dest)
            flag = "--use" if use else "--migrate-from"
            source = f"adapted from {shared} by labctl init {flag}"
        else:
            base, how = setup.profile_for(choice, labctl_home(), detect=not no_detect)
            typer.echo(how)
            source = "written by labctl init"
        config = setup.build_config(
            base=base,
            scheduler=None if choice == "auto" else choice,
            name=name,
            runs_base=runs_base,
            artifact_roots=roots,
            output_roots=outputs,
            repos=repos,
            shared_group=shared_group,
            database_url=database_url,
        )
        text = setup.config_text(config, source)
        if not yes:
            typer.echo(f"--- {dest}\n{text}---")
            if not typer.confirm("Write it?", default=True):
                fail("nothing written", 1)
        setup.write_config(dest, text, force=force)
        typer.echo(f"wrote {dest}")

    written = load_cluster_config(dest)
    if not no_create_dirs:
        from labctl.app import current_user

        for change in setup.prepare_user_dirs(written, current_user()):
            typer.echo(change.describe())
    if not no_agent:
        typer.echo(setup.install_agent_for_init(dest.absolute(), force=force))
    foreign = load_cluster_config(migrate_from) if migrate_from is not None else None
    if no_doctor:
        if foreign is not None and foreign.postgres is not None:
            typer.echo(f"its registry is not imported (--no-doctor): run `labctl import --from {migrate_from}`")
        typer.echo("doctor skipped: run `labctl doctor` when ready")
        return
    importing = foreign is not None and foreign.postgres is not None
    with open_database(written.database.url, written.postgres) as db:
        # adapting a cluster whose registry this database may hold: our tables go beside it
        before, after = upgrade(db, beside_original=importing)
        url = db.url
    typer.echo(
        f"schema version {after}" + (" (created)" if before is None else f" (was {before})" if before != after else "")
    )
    if importing and foreign is not None and foreign.postgres is not None:
        # the original's registry named by the adapted config: its runs, artifacts and aliases join the log
        from labctl.app import current_user
        from labctl.db import postgres_url
        from labctl.importer import import_registry, print_report

        stores = [Path(root) for root in foreign.filesystem.artifact_roots.values()]
        report = import_registry(url, postgres_url(foreign.postgres), actor=current_user(), stores=stores)
        print_report(report, typer.echo)
    Global.cluster = dest
    print_doctor(open_app())


@admin_app.command("add-user")
def add_user(
    name: Annotated[str, typer.Argument(help="The user's login name.")],
    no_pg_role: Annotated[bool, typer.Option("--no-pg-role", help="Do not create the user's Postgres role.")] = False,
    no_create_dirs: Annotated[
        bool, typer.Option("--no-create-dirs", help="Do not create the user's directories.")
    ] = False,
    service: Annotated[
        bool, typer.Option("--service", help="A group service account: its Postgres role may act for others.")
    ] = False,
) -> None:
    """Prepare a user: their own Postgres role (reached by peer authentication; the events they record carry
    it as the actor) and their run, alias and output directories (shared group, setgid); safe to repeat."""

    from labctl.app import check_user_name, load_config
    from labctl.commands._common import Global
    from labctl.settings import settings_from_env
    from labctl.setup import add_database_role
    from labctl.setup import add_user as prepare_user

    check_user_name(name)
    config, _path = load_config(Global.cluster)
    if not no_create_dirs:
        for change in prepare_user(config, name):
            typer.echo(change.describe())
    if not no_pg_role:
        if settings_from_env().database_url or config.database.url or config.postgres is not None:
            from labctl.db import database_url

            typer.echo(add_database_role(database_url(config.database.url, config.postgres), name, service=service))
        else:
            typer.echo(f"postgres role {name}: skipped (the embedded single-user database has no per-user roles)")


def _services(agent: bool, ui: bool, *, default_installed: bool = False) -> list[ServiceName]:
    """The services named by --agent/--ui; with neither, the installed ones when ``default_installed``
    (as the original's ``service status`` and ``restart``), else an error."""
    from labctl import setup
    from labctl.commands._common import fail

    chosen: list[ServiceName] = []
    if agent:
        chosen.append("agent")
    if ui:
        chosen.append("ui")
    if not chosen and default_installed:
        chosen = [s for s in setup.UNIT_NAMES if (setup.unit_dir() / setup.UNIT_NAMES[s]).exists()]
        if not chosen:
            fail("no labctl units installed (labctl service install --agent, --ui)", 1)
    if not chosen:
        fail("say which service: --agent, --ui or both", 2)
    return chosen


AgentFlag = Annotated[bool, typer.Option("--agent", help="The agent (labctl agent).")]
UiFlag = Annotated[bool, typer.Option("--ui", help="The web page (labctl serve on 127.0.0.1:8765).")]


@service_app.command("install")
def service_install(
    agent: AgentFlag = False,
    ui: UiFlag = False,
    bind: Annotated[str, typer.Option("--bind", help="HOST:PORT the web page listens on (--ui).")] = ("127.0.0.1:8765"),
    force: Annotated[bool, typer.Option("--force", help="Replace a unit file that is already there.")] = False,
) -> None:
    """Write the unit file(s) and enable and start them."""
    from labctl import setup
    from labctl.app import load_config
    from labctl.commands._common import Global, fail

    chosen = _services(agent, ui)
    setup.check_bind(bind)
    _config, cluster = load_config(Global.cluster)
    units = [setup.UNIT_NAMES[s] for s in chosen]
    existing = [setup.unit_dir() / u for u in units if (setup.unit_dir() / u).exists()]
    if existing and not force:
        fail(f"{existing[0]} already exists; pass --force to replace it, or `labctl service uninstall` first", 1)
    for service in chosen:
        typer.echo(f"wrote {setup.install_unit(service, cluster.absolute() if cluster else None, bind=bind)}")
    if not setup.user_manager_available():
        typer.echo(
            "no systemd user session here; in a login session run: "
            f"{setup.systemctl_line('daemon-reload')} && {setup.systemctl_line('enable', '--now', *units)}"
        )
        return
    for args in (["daemon-reload"], ["enable", "--now", *units]):
        proc = setup.systemctl(*args)
        if proc.returncode != 0:
            fail(f"{setup.systemctl_line(*args)} failed: {(proc.stderr or proc.stdout).strip()}", 1)
    typer.echo(f"enabled and started {', '.join(units)}")


@service_app.command("uninstall")
def service_uninstall(agent: AgentFlag = False, ui: UiFlag = False) -> None:
    """Stop and disable the unit(s) and remove their files."""
    from labctl import setup
    from labctl.commands._common import fail

    chosen = _services(agent, ui)
    units = [setup.UNIT_NAMES[s] for s in chosen]
    manager = setup.user_manager_available()
    if manager:
        proc = setup.systemctl("disable", "--now", *units)
        if proc.returncode != 0 and any((setup.unit_dir() / u).exists() for u in units):
            fail(
                f"{setup.systemctl_line('disable', '--now', *units)} failed: {(proc.stderr or proc.stdout).strip()}", 1
            )
    for service in chosen:
        removed = setup.remove_unit(service)
        typer.echo(f"removed {removed}" if removed else f"{setup.UNIT_NAMES[service]} was not installed")
    if manager:
        setup.systemctl("daemon-reload")
    else:
        typer.echo(
            "no systemd user session here; in a login session run: "
            f"{setup.systemctl_line('disable', '--now', *units)} && {setup.systemctl_line('daemon-reload')}"
        )


@service_app.command("status")
def service_status(agent: AgentFlag = False, ui: UiFlag = False) -> None:
    """systemctl --user status of the unit(s) (neither flag: every installed one)."""
    _pass_through("status", _services(agent, ui, default_installed=True))


@service_app.command("restart")
def service_restart(agent: AgentFlag = False, ui: UiFlag = False) -> None:
    """Restart the unit(s) (e.g. after upgrading labctl; neither flag: every installed one)."""
    _pass_through("restart", _services(agent, ui, default_installed=True))


def _pass_through(verb: str, chosen: list[ServiceName]) -> None:
    from labctl import setup
    from labctl.commands._common import fail

    units = [setup.UNIT_NAMES[s] for s in chosen]
    if not setup.user_manager_available():
        fail(f"no systemd user session here; in a login session run: {setup.systemctl_line(verb, *units)}", 1)
    proc = setup.systemctl(*([verb, "--no-pager", *units] if verb == "status" else [verb, *units]))
    typer.echo(proc.stdout, nl=False)
    if proc.returncode != 0:
        fail(f"{setup.systemctl_line(verb, *units)} exited {proc.returncode}: {proc.stderr.strip()}", proc.returncode)
