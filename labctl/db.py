"""Where the database is, how to connect to it, and keeping its schema current.

With no configuration labctl runs an embedded Postgres under ``$LABCTL_HOME``
(started once, reused by every later command); ``LABCTL_DATABASE_URL``, a
cluster config's ``[database] url`` or the original labctl's ``[postgres]``
table points it at any real Postgres instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from contextlib import suppress
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import tenacity
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

from events.queries import load_queries
from labctl.errors import DatabaseUnavailable, InputError, UserError
from labctl.settings import Settings, settings_from_env

if TYPE_CHECKING:
    from labctl.files.cluster import Postgres

T = TypeVar("T")
QUERIES = load_queries("labctl", "maintenance.sql")

SEARCH_PATH = "live, labctl"
_SCHEMA_LOCK = 7146012
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def labctl_home() -> Path:
    """``$LABCTL_HOME`` (default ``~/.labctl``)."""
    return settings_from_env().home


# ------------------------------------------------------------ embedded server


def embedded_url(home: Path | None = None) -> str:
    """Start (once) or find the embedded Postgres under ``$LABCTL_HOME``; return its URL."""
    from labctl import embedded

    return embedded.start(home or labctl_home())


#: The role labctl's commands use on the embedded server. Not the superuser: a member of
#: labctl_app, so not even labctl itself can rewrite the log it keeps (roles.sql).
EMBEDDED_APP_ROLE = "labctl"


def as_role(url: str, role: str) -> str:
    """``url`` connecting as ``role`` instead (without a password), in the form it was given."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{quote(role, safe='')}@{host}"))
    params = conninfo_to_dict(url)
    params["user"] = role
    params.pop("password", None)
    return make_conninfo("", **params)


def embedded_app_url(home: Path | None = None) -> str:
    """The embedded server's URL for everyday commands (role ``labctl``)."""
    return as_role(embedded_url(home), EMBEDDED_APP_ROLE)


def prepare_embedded(admin_url: str) -> tuple[int | None, int]:
    """Create or upgrade the schema as the superuser, and the everyday login role."""
    with connect(admin_url) as conn:
        versions = ensure_schema(conn)
        ensure_login_role(conn, EMBEDDED_APP_ROLE, "labctl_app")
    return versions


def ensure_login_role(conn: psycopg.Connection[Any], name: str, group: str) -> bool:
    """Create login role ``name`` if missing and make it a member of ``group``; True when created."""
    exists = conn.execute(QUERIES["role_exists"], {"name": name}).fetchone() is not None
    if not exists:
        with suppress(psycopg.errors.DuplicateObject):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name)))
    return not exists


def stop_embedded(home: Path | None = None) -> bool:
    """Stop the embedded server if it runs; True when it was running."""
    from labctl import embedded

    return embedded.stop(home or labctl_home())


def remove_embedded(home: Path) -> None:
    """Stop the embedded server of ``home`` and delete its data (tests and benchmarks clean up with it)."""
    from labctl import embedded

    embedded.remove(home)


def database_url(configured: str | None = None, postgres: Postgres | None = None) -> str:
    """``LABCTL_DATABASE_URL``, else the cluster config's ``[database] url``, else its ``[postgres]``
    table (the original labctl's), else the embedded server."""
    if url := settings_from_env().database_url or configured:
        return url
    if postgres is not None:
        return postgres_url(postgres)
    return embedded_app_url()


def open_database(
    configured: str | None = None, postgres: Postgres | None = None, *, settings: Settings | None = None
) -> Database:
    """The database in effect; on the embedded server, with the superuser for schema upgrades."""
    settings = settings or settings_from_env()
    retry = settings.db_retry_seconds
    if settings.database_url or configured or postgres is not None:
        return Database(settings.database_url or database_url(configured, postgres), retry_seconds=retry)
    admin = embedded_url(settings.home)
    return Database(as_role(admin, EMBEDDED_APP_ROLE), admin_url=admin, retry_seconds=retry)


def postgres_url(pg: Postgres) -> str:
    """The URL of the original labctl's ``[postgres]`` table, as its code reads it.

    ``host`` starting with ``/`` is the directory of the Unix socket (peer
    authentication); ``user`` defaults to ``$USER``. The password is never put
    in the URL (it would show in ``db url`` and unit files): ``password_env``
    names a variable that is handed to libpq as ``PGPASSWORD``; without it
    libpq reads ``~/.pgpass`` and the ``PG*`` variables itself.
    """
    user = pg.user or os.environ.get("USER") or os.environ.get("USERNAME")
    if not user:
        raise UserError("[postgres] user is not set and neither is $USER; cannot pick a Postgres role")
    if pg.password_env is not None:
        password = os.environ.get(pg.password_env)
        if password is None:
            raise UserError(f"[postgres] password_env = {pg.password_env!r}, but that variable is not set")
        os.environ.setdefault("PGPASSWORD", password)
    who = quote(user, safe="")
    database = quote(pg.database, safe="")
    if pg.host.startswith("/"):
        return f"postgresql://{who}@/{database}?host={quote(pg.host, safe='')}&port={pg.port}"
    host = f"[{pg.host}]" if ":" in pg.host else quote(pg.host, safe="")
    return f"postgresql://{who}@{host}:{pg.port}/{database}"


def describe_url(url: str) -> str:
    """The URL (or ``key=value`` conninfo) with every password masked, for messages."""
    if "://" not in url:
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            return "(a connection string libpq cannot read)"
        if "password" in params:
            params["password"] = "***"
        return make_conninfo("", **params)
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed "[" of an IPv6 host: show no more than the scheme
        return f"{url.partition('://')[0]}://(a URL that cannot be read)"
    userinfo, at, hosts = parts.netloc.rpartition("@")  # the last @: a password may hold one
    netloc = f"{userinfo.partition(':')[0]}:***@{hosts}" if at and ":" in userinfo else parts.netloc
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key.lower() == "password" for key, _ in query):
        masked = [(key, "***" if key.lower() == "password" else value) for key, value in query]
        parts = parts._replace(query=urlencode(masked, safe="/:*"))
    return urlunsplit(parts._replace(netloc=netloc))


# ---------------------------------------------------------------- connecting


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the connection was lost or the server is (re)starting."""
    if isinstance(exc, psycopg.OperationalError):
        state = getattr(exc, "sqlstate", None)
        return state is None or state[:2] in {"08", "57"}
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        return state in {"40001", "40P01", "57P01", "57P02", "57P03"} or state[:2] == "08"
    return False


def retry_budget_seconds() -> float:
    """``$LABCTL_DB_RETRY_SECONDS`` (default 10): how long transient failures are retried."""
    return settings_from_env().db_retry_seconds


def _retrying(budget: float | None = None) -> tenacity.Retrying:
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_delay(retry_budget_seconds() if budget is None else budget),
        wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
        reraise=True,
    )


def check_url(url: str) -> str:
    """``url`` if libpq can read it as a connection string; InputError naming the problem otherwise."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        # libpq quotes the URL in its message: show it masked there too
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = first.replace(url, describe_url(url)) if url in first else describe_url(first)
        raise InputError(f"malformed database URL {describe_url(url)}: {reason}") from None
    for port in str(params.get("port") or "").split(","):
        if port and not port.isdigit():
            raise InputError(f"malformed database URL {describe_url(url)}: port {port!r} is not a number")
    return url


def connect(url: str, *, budget: float | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit connection with labctl's search path, retrying transient failures."""
    check_url(url)
    try:
        for attempt in _retrying(budget):
            with attempt:
                return psycopg.connect(
                    url, autocommit=True, options=f"-c search_path={SEARCH_PATH.replace(' ', '')}", **kwargs
                )
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(f"cannot reach the database at {describe_url(url)}: {reason}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


class Database:
    """A database URL plus one lazily opened connection, reopened after failures."""

    def __init__(self, url: str, *, admin_url: str | None = None, retry_seconds: float | None = None) -> None:
        self.url = url
        #: how long transient failures are retried (None: ``$LABCTL_DB_RETRY_SECONDS`` when they happen)
        self.retry_seconds = retry_seconds
        #: a role that may create the schema and roles (the embedded server's superuser), if known
        self.admin_url = admin_url
        self._conn: psycopg.Connection[Any] | None = None
        self._schema_checked = False

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._open()
            if not self._schema_checked:
                if self.admin_url is not None and current_schema_version(self._conn) != _target_version():
                    prepare_embedded(self.admin_url)
                else:
                    ensure_schema(self._conn)
                self._schema_checked = True
        return self._conn

    def connect(self, *, budget: float | None = None) -> psycopg.Connection[Any]:
        """A connection of its own (LISTEN, heartbeats), retried for this database's budget."""
        return connect(self.url, budget=self.retry_seconds if budget is None else budget)

    def _open(self) -> psycopg.Connection[Any]:
        if self.admin_url is None or self._schema_checked:
            return self.connect()
        try:
            return connect(self.url, budget=0)
        except DatabaseUnavailable:
            # The everyday role is missing (a server set up by an older labctl): create it.
            prepare_embedded(self.admin_url)
            return self.connect()

    def run(self, work: Callable[[psycopg.Connection[Any]], T], *, budget: float | None = None) -> T:
        """Run ``work`` in one transaction; a transient failure retries the whole of it.

        ``work`` must be safe to repeat (appends carry idempotency keys). Called inside a transaction
        already open on this connection (a reactor handling a page), ``work`` runs in a savepoint of
        it and is not retried here: a lost connection lost the caller's transaction too, so the
        caller retries the whole of it.
        """
        if (
            self._conn is not None
            and not self._conn.closed
            and self._conn.info.transaction_status != TransactionStatus.IDLE
        ):
            with self._conn.transaction():
                return work(self._conn)
        try:
            for attempt in _retrying(self.retry_seconds if budget is None else budget):
                with attempt:
                    try:
                        conn = self.conn
                        with conn.transaction():
                            return work(conn)
                    except BaseException as exc:
                        if is_transient(exc) and self._conn is not None:
                            self._conn.close()
                        raise
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseUnavailable(f"lost the database at {describe_url(self.url)}: {reason}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -------------------------------------------------------------------- schema


def schema_sql() -> str:
    """The shipped schema.sql (inside the wheel; the source tree for editable installs)."""
    shipped = resources.files("labctl").joinpath("schema.sql")
    if shipped.is_file():
        return shipped.read_text()
    return (Path(__file__).resolve().parent.parent / "schema.sql").read_text()


def roles_sql() -> str:
    """Roles, ownership and grants (labctl/roles.sql): applied after every create or upgrade."""
    return resources.files("labctl").joinpath("roles.sql").read_text()


def migrations() -> list[tuple[int, str, str]]:
    """Upgrade steps as ``(version, name, sql)``, in order."""
    steps = []
    for entry in resources.files("labctl.migrations").iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            steps.append((int(m.group(1)), entry.name, entry.read_text()))
    return sorted(steps)


def schema_version_of_file(sql: str) -> int:
    m = re.search(r"INSERT INTO schema_version \(version\) VALUES \((\d+)\)", sql)
    if not m:
        raise RuntimeError("schema.sql does not record its version")
    return int(m.group(1))


def current_schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The database's schema version, or None when labctl's schema is absent."""
    row = conn.execute(QUERIES["schema_tables"]).fetchone()
    if not row or not (row[0] or row[1]):
        return None
    # Before version 4 labctl's tables lived in public.
    row = conn.execute(QUERIES["schema_version" if row[0] else "schema_version_before_4"]).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def _target_version() -> int:
    return schema_version_of_file(schema_sql())


def original_registry_runs(conn: psycopg.Connection[Any]) -> int | None:
    """How many runs an original (Rust) labctl registry in this database holds; None without one."""
    row = conn.execute(QUERIES["original_registry_present"]).fetchone()
    if not row or not row[0]:
        return None
    row = conn.execute(QUERIES["original_registry_runs"]).fetchone()
    return int(row[0]) if row else 0


class OriginalRegistryOnly(DatabaseUnavailable):
    """The database holds an original labctl registry and no labctl event log yet."""


def ensure_schema(conn: psycopg.Connection[Any], *, beside_original: bool = False) -> tuple[int | None, int]:
    """Create or upgrade the schema; idempotent and safe when run concurrently.

    A database holding only an original labctl registry is refused (the user most
    likely wants ``labctl import``) unless ``beside_original``.
    Returns ``(version before, version after)``.
    """
    target = schema_version_of_file(schema_sql())
    before = current_schema_version(conn)
    if before == target:
        return before, target
    if before is None and not beside_original:
        runs = original_registry_runs(conn)
        if runs is not None:
            raise OriginalRegistryOnly(
                f"this database holds an original labctl registry ({runs} runs) and no labctl event log yet: "
                "bring it in with `labctl import` (README: Switching from the original labctl)"
            )
    # A session lock taken before the transaction: the check below then sees whatever a
    # concurrent creator committed while we waited.
    conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
    try:
        before = current_schema_version(conn)
        if before is not None and before > target:
            raise DatabaseUnavailable(
                f"the database schema is version {before}, newer than this labctl knows ({target}); upgrade labctl"
            )
        if before != target:
            with conn.transaction():
                # Objects go to the first schema of the path that exists: public until
                # the step that creates labctl's own schema moves them there.
                conn.execute("SET LOCAL search_path = labctl, public")
                if before is None:
                    conn.execute(schema_sql().encode())
                else:
                    for version, _name, sql in migrations():
                        if before < version <= target:
                            conn.execute(sql.encode())
                conn.execute(roles_sql().encode())
    except psycopg.errors.InsufficientPrivilege as exc:
        role = conn.info.user
        raise DatabaseUnavailable(
            f"the database schema is version {before}, this labctl needs {target}, and role {role} may not "
            "create or upgrade it: run `labctl db upgrade` with the URL of a superuser or the database owner"
        ) from exc
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))
    return before, target


def upgrade(db: Database, *, beside_original: bool = False) -> tuple[int | None, int]:
    """``labctl db upgrade``: create or upgrade the schema, roles and grants (as the admin role if known)."""
    if db.admin_url is not None:
        return prepare_embedded(db.admin_url)
    with connect(db.url) as conn:
        return ensure_schema(conn, beside_original=beside_original)
