"""What users do with artifacts: register externals, list, alias, trace lineage, collect garbage.

The log is the truth and the alias symlinks follow it: every command records
its events first and then brings the links on disk in line with the read
model. gc records ArtifactsCollected before it deletes any bytes, so nothing
can pick an artifact whose bytes are on their way out.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import psycopg

import events
import projections
from events import ConcurrencyError, NewEvent
from events.types import AliasRemoved, AliasSet, ArtifactRegistered, ArtifactsCollected, CacheInvalidated
from labctl import cache
from labctl.app import App
from labctl.artifacts import artifact_id, path_identity_hash, remove_alias_link, remove_object, set_alias_link
from labctl.artifacts.store import OBJECTS_DIRNAME, alias_link_path
from labctl.errors import InputError, UserError
from labctl.files import ClusterConfig
from labctl.lookup import alias_target
from labctl.names import OutsideRoot, inside
from projections.engine import APPEND_LOCK
from projections.runs import TERMINAL_STATES

log = logging.getLogger(__name__)

EXTERNAL_KIND = "external"
_RETRIES = 10


class Artifact(msgspec.Struct, kw_only=True):
    id: str
    hash: str
    kind: str
    path: str
    user: str
    producer_run_id: str | None
    size_bytes: int | None
    metadata: dict[str, Any]
    created_at: datetime
    removed_at: datetime | None
    aliases: list[str] = []  # "user/alias"


_ARTIFACT_COLUMNS = (
    "a.id, a.hash, a.kind, a.path, a.user_name, a.producer_run_id, a.size_bytes, a.metadata, a.created_at, "
    "a.removed_at, coalesce((SELECT array_agg(al.user_name || '/' || al.alias ORDER BY al.user_name, al.alias) "
    "FROM aliases al WHERE al.artifact_id = a.id), '{}')"
)


def _artifact(row: tuple[Any, ...]) -> Artifact:
    return Artifact(
        id=row[0],
        hash=row[1],
        kind=row[2],
        path=row[3],
        user=row[4],
        producer_run_id=row[5],
        size_bytes=row[6],
        metadata=row[7],
        created_at=row[8],
        removed_at=row[9],
        aliases=list(row[10]),
    )


# -------------------------------------------------------------- resolving


def find_artifact(conn: psycopg.Connection[Any], artifact_id_: str) -> Artifact | None:
    row = conn.execute(f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts a WHERE a.id = %s", (artifact_id_,)).fetchone()
    return _artifact(row) if row else None


def resolve_artifact(conn: psycopg.Connection[Any], user: str, ref: str, *, include_removed: bool = False) -> Artifact:
    """An artifact from its id, an unambiguous id prefix, or an alias (``name`` for ``user``, or ``owner/name``)."""
    if ref.startswith("artifact_"):
        rows = conn.execute(
            "SELECT id, removed_at FROM artifacts WHERE id >= %s AND id < %s ORDER BY id LIMIT 6",
            (ref, ref + "\uffff"),
        ).fetchall()
        if len(rows) > 1:
            shown = ", ".join(r[0] for r in rows[:5])
            raise UserError(f"{ref!r} is ambiguous: it matches {shown}{' ...' if len(rows) > 5 else ''}")
        if not rows:
            raise UserError(f"no artifact {ref!r}")
        found = find_artifact(conn, rows[0][0])
    else:
        target = alias_target(conn, ref)
        if target is None:
            raise UserError(f"no artifact id or alias {ref!r}")
        found = find_artifact(conn, target)
    if found is None:
        raise UserError(f"no artifact {ref!r}")
    if found.removed_at is not None and not include_removed:
        raise UserError(f"{found.id} was collected by gc on {found.removed_at:%Y-%m-%d}: its bytes are gone")
    return found


# ------------------------------------------------------------ alias links


def _kind_root(app: App, kind: str) -> Path | None:
    root = app.config.filesystem.artifact_roots.get(kind)
    return Path(root) if root else None


def _check_alias_name(user: str, alias: str) -> None:
    try:
        alias_link_path("/", user, alias)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def _sync_alias_link(app: App, user: str, alias: str, kinds_before: set[str]) -> Path | None:
    """Make ``aliases/<user>/<alias>`` under every involved kind root match the read model."""
    conn = app.db.conn
    row = conn.execute(
        "SELECT a.kind, a.path FROM aliases al JOIN artifacts a ON a.id = al.artifact_id "
        "WHERE al.user_name = %s AND al.alias = %s",
        (user, alias),
    ).fetchone()
    link = None
    try:
        current_root = _kind_root(app, row[0]) if row else None
        for kind in kinds_before:
            root = _kind_root(app, kind)
            if root is not None and root != current_root:
                remove_alias_link(root, user, alias)
        if row is not None and current_root is not None:
            link = set_alias_link(current_root, user, alias, row[1])
    except (OSError, ValueError) as exc:
        raise UserError(f"alias {user}/{alias} is recorded, but its link could not be updated: {exc}") from exc
    return link


def _alias_kinds(conn: psycopg.Connection[Any], user: str, alias: str) -> set[str]:
    rows = conn.execute(
        "SELECT a.kind FROM aliases al JOIN artifacts a ON a.id = al.artifact_id "
        "WHERE al.user_name = %s AND al.alias = %s",
        (user, alias),
    ).fetchall()
    return {r[0] for r in rows}


# -------------------------------------------------------- register-external


class Registration(msgspec.Struct, kw_only=True):
    artifact_id: str
    path: str
    kind: str
    alias: str
    new: bool  # False: the path was registered before and only the alias was set
    link: str | None


def register_external(app: App, *, alias: str, path: str, kind: str = EXTERNAL_KIND) -> Registration:
    """Record bytes labctl does not own (never moved, never collected) and point an alias at them."""
    if not os.path.exists(path):
        raise InputError(f"{path} does not exist")
    _check_alias_name(app.user, alias)
    if _kind_root(app, kind) is None:
        known = ", ".join(sorted(app.config.filesystem.artifact_roots)) or "none"
        raise InputError(f"no artifact root for kind {kind!r} in the cluster config (configured: {known})")
    canonical = os.path.realpath(path)
    digest = path_identity_hash(canonical)
    aid = artifact_id(digest)
    size = os.path.getsize(canonical) if os.path.isfile(canonical) else None
    conn = app.db.conn
    for _ in range(_RETRIES):
        kinds_before = _alias_kinds(conn, app.user, alias)
        existing = find_artifact(conn, aid)
        batch = []
        if existing is None:
            registered = ArtifactRegistered(
                artifact_id=aid,
                hash=digest,
                kind=kind,
                path=canonical,
                user=app.user,
                size_bytes=size,
                metadata={"external": True, "given_path": path},
            )
            batch.append(NewEvent(f"artifact-{aid}", registered, 0))
        batch.append(NewEvent(f"alias-{app.user}/{alias}", AliasSet(user=app.user, alias=alias, artifact_id=aid)))
        try:
            app.record(batch, f"register-external-{uuid.uuid4().hex}")
        except ConcurrencyError:
            continue  # someone registered the same path at the same moment: it exists now
        link = _sync_alias_link(app, app.user, alias, kinds_before)
        recorded_kind = existing.kind if existing else kind
        return Registration(
            artifact_id=aid, path=canonical, kind=recorded_kind, alias=alias, new=existing is None, link=_s(link)
        )
    raise UserError(f"could not register {canonical}: it keeps changing")


def _s(path: Path | None) -> str | None:
    return str(path) if path is not None else None


# ------------------------------------------------------------------ listing


def list_artifacts(
    conn: psycopg.Connection[Any],
    *,
    kind: str | None = None,
    user: str | None = None,
    include_removed: bool = False,
    limit: int | None = 200,
) -> list[Artifact]:
    """Artifacts, oldest first (the newest ``limit`` of them)."""
    where = ["TRUE"]
    params: dict[str, Any] = {"limit": limit}
    if kind is not None:
        where.append("a.kind = %(kind)s")
        params["kind"] = kind
    if user is not None:
        where.append("a.user_name = %(user)s")
        params["user"] = user
    if not include_removed:
        where.append("a.removed_at IS NULL")
    query = (
        f"SELECT * FROM (SELECT {_ARTIFACT_COLUMNS} FROM artifacts a WHERE {' AND '.join(where)} "
        "ORDER BY a.created_at DESC, a.id DESC LIMIT %(limit)s) t ORDER BY 9, 1"
    )
    return [_artifact(r) for r in conn.execute(query, params).fetchall()]


# ------------------------------------------------------------------ aliases


class AliasEntry(msgspec.Struct, kw_only=True):
    user: str
    alias: str
    artifact_id: str
    kind: str
    path: str
    set_at: datetime


def list_aliases(conn: psycopg.Connection[Any], *, user: str | None) -> list[AliasEntry]:
    rows = conn.execute(
        "SELECT al.user_name, al.alias, al.artifact_id, a.kind, a.path, al.set_at "
        "FROM aliases al JOIN artifacts a ON a.id = al.artifact_id "
        "WHERE %(user)s::text IS NULL OR al.user_name = %(user)s ORDER BY al.user_name, al.alias",
        {"user": user},
    ).fetchall()
    return [AliasEntry(user=r[0], alias=r[1], artifact_id=r[2], kind=r[3], path=r[4], set_at=r[5]) for r in rows]


class AliasChange(msgspec.Struct, kw_only=True):
    user: str
    alias: str
    artifact_id: str
    link: str | None


def set_alias(app: App, name: str, ref: str) -> AliasChange:
    """Point the user's alias ``name`` at an artifact (by id, prefix or another alias)."""
    _check_alias_name(app.user, name)
    target = resolve_artifact(app.db.conn, app.user, ref)
    kinds_before = _alias_kinds(app.db.conn, app.user, name)
    event = AliasSet(user=app.user, alias=name, artifact_id=target.id)
    app.record([NewEvent(f"alias-{app.user}/{name}", event)], f"alias-set-{uuid.uuid4().hex}")
    link = _sync_alias_link(app, app.user, name, kinds_before)
    return AliasChange(user=app.user, alias=name, artifact_id=target.id, link=_s(link))


def remove_alias(app: App, name: str) -> AliasChange:
    """Remove the user's alias ``name`` (the artifact stays; gc may collect it later)."""
    _check_alias_name(app.user, name)  # refused before anything is appended
    conn = app.db.conn
    for _ in range(_RETRIES):
        row = conn.execute(
            "SELECT artifact_id FROM aliases WHERE user_name = %s AND alias = %s", (app.user, name)
        ).fetchone()
        if row is None:
            raise UserError(f"no alias {name!r} for user {app.user}")
        kinds_before = _alias_kinds(conn, app.user, name)
        stream = f"alias-{app.user}/{name}"
        removed = NewEvent(stream, AliasRemoved(user=app.user, alias=name), events.stream_version(conn, stream))
        try:
            app.record([removed], f"alias-rm-{uuid.uuid4().hex}")
        except ConcurrencyError:
            continue  # it was just re-pointed or removed: look again
        _sync_alias_link(app, app.user, name, kinds_before)
        return AliasChange(user=app.user, alias=name, artifact_id=row[0], link=None)
    raise UserError(f"could not remove alias {name!r}: it keeps changing")


# ------------------------------------------------------------------ lineage


@dataclass
class Node:
    type: str  # "run" | "artifact" | "path" (an external input that is not an artifact)
    id: str
    label: str = ""
    children: list[Node] = field(default_factory=list)
    repeated: bool = False  # shown in full elsewhere in this tree

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "id": self.id, "label": self.label}
        if self.repeated:
            out["repeated"] = True
        out["children"] = [c.to_json() for c in self.children]
        return out


@dataclass
class Lineage:
    root: Node
    upstream: list[Node]
    downstream: list[Node]
    depth: int

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root.to_json(),
            "upstream": [n.to_json() for n in self.upstream],
            "downstream": [n.to_json() for n in self.downstream],
            "depth": self.depth,
        }


# Each step walks one edge: artifact <- its producer run <- that run's inputs (upstream),
# or artifact -> runs that read it -> what they wrote (downstream). UNION and the depth bound stop cycles.
_UPSTREAM = """
WITH RECURSIVE walk(type, id, parent_type, parent_id, depth) AS (
    SELECT %(type)s::text, %(id)s::text, NULL::text, NULL::text, 0
  UNION
    SELECT step.type, step.id, w.type, w.id, w.depth + 1
    FROM walk w
    CROSS JOIN LATERAL (
        SELECT 'run'::text AS type, a.producer_run_id AS id FROM artifacts a
        WHERE w.type = 'artifact' AND a.id = w.id AND a.producer_run_id IS NOT NULL
      UNION ALL
        SELECT CASE WHEN i.artifact_id IS NULL THEN 'path' ELSE 'artifact' END, coalesce(i.artifact_id, i.path)
        FROM run_inputs i WHERE w.type = 'run' AND i.run_id = w.id
    ) step
    WHERE w.depth < %(depth)s
)
SELECT DISTINCT parent_type, parent_id, type, id FROM walk WHERE depth > 0
"""

_DOWNSTREAM = """
WITH RECURSIVE walk(type, id, parent_type, parent_id, depth) AS (
    SELECT %(type)s::text, %(id)s::text, NULL::text, NULL::text, 0
  UNION
    SELECT step.type, step.id, w.type, w.id, w.depth + 1
    FROM walk w
    CROSS JOIN LATERAL (
        SELECT 'run'::text AS type, i.run_id AS id FROM run_inputs i
        WHERE w.type = 'artifact' AND i.artifact_id = w.id
      UNION ALL
        SELECT 'artifact', o.artifact_id FROM run_outputs o WHERE w.type = 'run' AND o.run_id = w.id
    ) step
    WHERE w.depth < %(depth)s
)
SELECT DISTINCT parent_type, parent_id, type, id FROM walk WHERE depth > 0
"""


def resolve_lineage_ref(conn: psycopg.Connection[Any], user: str, ref: str) -> tuple[str, str]:
    """``("run", id)`` or ``("artifact", id)`` for a run id, an artifact id (or their prefixes) or an alias."""
    if ref.startswith("run_"):
        from labctl.runs import resolve_run

        return "run", resolve_run(conn, ref)
    try:
        return "artifact", resolve_artifact(conn, user, ref, include_removed=True).id
    except UserError:
        if ref.startswith("artifact_") or "/" in ref:
            raise
    raise UserError(f"no run, artifact or alias {ref!r}")


def lineage(conn: psycopg.Connection[Any], user: str, ref: str, *, depth: int = 20) -> Lineage:
    """The runs and artifacts upstream and downstream of ``ref``, as two trees."""
    root_type, root_id = resolve_lineage_ref(conn, user, ref)
    params = {"type": root_type, "id": root_id, "depth": depth}
    up_edges = conn.execute(_UPSTREAM, params).fetchall()
    down_edges = conn.execute(_DOWNSTREAM, params).fetchall()
    labels = _labels(conn, user, [(root_type, root_id)] + [(e[2], e[3]) for e in up_edges + down_edges])
    root = Node(root_type, root_id, labels.get((root_type, root_id), ""))
    return Lineage(
        root=root,
        upstream=_tree(root_type, root_id, up_edges, labels, depth),
        downstream=_tree(root_type, root_id, down_edges, labels, depth),
        depth=depth,
    )


_NODE_ORDER = {"run": 0, "artifact": 1, "path": 2}


def _tree(
    root_type: str, root_id: str, edges: list[tuple[Any, ...]], labels: dict[tuple[str, str], str], depth: int
) -> list[Node]:
    children: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for ptype, pid, ctype, cid in edges:
        children.setdefault((ptype, pid), []).append((ctype, cid))
    for kids in children.values():
        kids.sort(key=lambda k: (_NODE_ORDER[k[0]], k[1]))
    expanded: set[tuple[str, str]] = {(root_type, root_id)}

    def build(key: tuple[str, str], level: int) -> Node:
        node = Node(key[0], key[1], labels.get(key, ""))
        kids = children.get(key, []) if level < depth else []
        if key in expanded and kids:
            node.repeated = True  # a diamond or a cycle: its subtree is printed once
            return node
        expanded.add(key)
        node.children = [build(k, level + 1) for k in kids]
        return node

    return [build(k, 1) for k in children.get((root_type, root_id), [])]


def _labels(conn: psycopg.Connection[Any], user: str, nodes: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    run_ids = sorted({i for t, i in nodes if t == "run"})
    artifact_ids = sorted({i for t, i in nodes if t == "artifact"})
    labels: dict[tuple[str, str], str] = {}
    for rid, name, status, owner in conn.execute(
        "SELECT id, name, status, user_name FROM runs WHERE id = ANY(%s)", (run_ids,)
    ):
        labels[("run", rid)] = f"{name} [{status}] {owner}"
    for a in conn.execute(f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts a WHERE a.id = ANY(%s)", (artifact_ids,)):
        art = _artifact(a)
        shown = ", ".join(short_alias(x, user) for x in art.aliases)
        labels[("artifact", art.id)] = (
            f"{art.kind}{' ' + shown if shown else ''}{' (collected)' if art.removed_at else ''}"
        )
    for t, i in nodes:
        if t == "path":
            labels[(t, i)] = "external input"
    return labels


def short_alias(qualified: str, user: str) -> str:
    """``name`` for the current user's aliases, ``owner/name`` for others' (as you would type it)."""
    owner, _, name = qualified.partition("/")
    return name if owner == user else qualified


def render_tree(nodes: list[Node], indent: str = "") -> Iterator[str]:
    for i, node in enumerate(nodes):
        last = i == len(nodes) - 1
        text = f"{node.id}  {node.label}".rstrip()
        yield f"{indent}{'└── ' if last else '├── '}{text}{'  (see above)' if node.repeated else ''}"
        yield from render_tree(node.children, indent + ("    " if last else "│   "))


def render_lineage(result: Lineage) -> Iterator[str]:
    yield f"{result.root.id}  {result.root.label}".rstrip()
    for title, nodes in (
        ("upstream (what it came from)", result.upstream),
        ("downstream (what came of it)", result.downstream),
    ):
        yield f"{title}:"
        yield from render_tree(nodes) if nodes else ["└── (nothing)"]


# ----------------------------------------------------------------------- gc

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_AGE_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE_MAX_SECONDS = 100 * 365 * 86400  # beyond this a cutoff falls before year 1


def parse_age(value: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``, ``"0s"``."""
    match = _AGE.match(value)
    if not match:
        raise InputError(f"bad age {value!r}: expected a number and a unit (s, m, h, d, w), e.g. 30d")
    seconds = int(match.group(1)) * _AGE_UNIT[match.group(2)]
    if seconds > _AGE_MAX_SECONDS:
        raise InputError(f"bad age {value!r}: at most 100 years")
    return timedelta(seconds=seconds)


# Collectable: bytes labctl moved into <root>/_objects/ for a run's output, still there, created before the
# cutoff, with no alias, read by no unfinished run, and not the output of a pipeline that is still going.
_COLLECTABLE = """
SELECT a.id, a.hash, a.kind, a.path, a.producer_run_id, a.created_at
FROM artifacts a
WHERE a.removed_at IS NULL
  AND a.created_at < %(cutoff)s
  AND (%(user)s::text IS NULL OR a.user_name = %(user)s)
  AND a.kind <> %(external)s
  AND a.producer_run_id IS NOT NULL
  AND coalesce(a.metadata->>'external', 'false') <> 'true'
  AND NOT EXISTS (SELECT 1 FROM aliases al WHERE al.artifact_id = a.id)
  AND NOT EXISTS (
      SELECT 1 FROM run_inputs i JOIN runs r ON r.id = i.run_id
      WHERE i.artifact_id = a.id AND r.status <> ALL(%(terminal)s))
  AND NOT EXISTS (
      SELECT 1 FROM run_outputs o JOIN runs p ON p.id = o.run_id JOIN runs other ON other.pipeline_id = p.pipeline_id
      WHERE o.artifact_id = a.id AND p.pipeline_id IS NOT NULL AND other.status <> ALL(%(terminal)s))
ORDER BY a.created_at, a.id
"""

_KEYS_OF_PRODUCERS = """
SELECT DISTINCT r.cache_key FROM runs r
WHERE r.cache_key IS NOT NULL
  AND (r.id = ANY(%(producers)s) OR r.id IN (SELECT o.run_id FROM run_outputs o WHERE o.artifact_id = ANY(%(ids)s)))
ORDER BY 1
"""


class Collectable(msgspec.Struct, kw_only=True):
    artifact_id: str
    hash: str
    kind: str
    path: str
    producer_run_id: str
    created_at: datetime
    size_bytes: int = 0


class GcReport(msgspec.Struct, kw_only=True):
    artifacts: list[Collectable]
    bytes_freed: int
    removed: bool  # False: a dry run
    cutoff: datetime
    invalidated_cache_keys: list[str] = []


def object_root(path: str, content_hash: str) -> Path | None:
    """``<root>`` when ``path`` is ``<root>/_objects/<hash[:2]>/<hash>`` (bytes labctl moved in), else None."""
    p = Path(path)
    if p.name != content_hash or p.parent.name != content_hash[:2] or p.parent.parent.name != OBJECTS_DIRNAME:
        return None
    return p.parent.parent.parent


def collectable(
    conn: psycopg.Connection[Any], cutoff: datetime, *, user: str | None, stores: Sequence[Path] = ()
) -> list[Collectable]:
    """Artifacts gc may delete: ``user``'s only (None: everyone's), whose objects sit in one of ``stores``."""
    rows = conn.execute(
        _COLLECTABLE,
        {"cutoff": cutoff, "external": EXTERNAL_KIND, "terminal": sorted(TERMINAL_STATES), "user": user},
    ).fetchall()
    return [
        Collectable(artifact_id=r[0], hash=r[1], kind=r[2], path=r[3], producer_run_id=r[4], created_at=r[5])
        for r in rows
        if _in_a_store(r[3], r[1], stores)
    ]


def _in_a_store(path: str, content_hash: str, stores: Sequence[Path]) -> bool:
    """Whether ``path`` is an object inside one of the configured stores (nothing else is ever deleted)."""
    root = object_root(path, content_hash)
    if root is None:
        return False
    for store in stores:
        try:
            inside(store, path)
        except OutsideRoot:
            continue
        return True
    log.warning("gc: %s is not inside a configured artifact root; left alone", path)
    return False


def stores_of(config: ClusterConfig) -> list[Path]:
    """Where objects may live: each artifact root, and the ``_store`` fallback beside each output root."""
    fs = config.filesystem
    return [Path(r) for r in fs.artifact_roots.values()] + [Path(r).parent / "_store" for r in fs.output_roots.values()]


#: gc needs --force for a retention shorter than this: an artifact that young may be about to get its alias
MIN_RETENTION = timedelta(minutes=1)


def tree_size(path: str | os.PathLike[str]) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def gc(app: App, *, older_than: timedelta, remove: bool, now: datetime | None = None, force: bool = False) -> GcReport:
    """List (or, with ``remove``, delete) the bytes of artifacts nothing needs any more.

    Only the acting user's artifacts, with a retention of at least MIN_RETENTION, unless ``force``.
    """
    if older_than < MIN_RETENTION and not force:
        raise InputError(f"--older-than {older_than}: at least {MIN_RETENTION} (or --force)")
    cutoff = (now or datetime.now(UTC)) - older_than
    user = None if force else app.user
    stores = stores_of(app.config)
    if not remove:
        found = collectable(app.db.conn, cutoff, user=user, stores=stores)
        for c in found:
            c.size_bytes = tree_size(c.path)
        return GcReport(artifacts=found, bytes_freed=sum(c.size_bytes for c in found), removed=False, cutoff=cutoff)

    reason = f"gc: no alias, no unfinished reader, created before {cutoff.isoformat(timespec='seconds')}"
    key = f"gc-{uuid.uuid4().hex}"

    def decide_and_record(conn: psycopg.Connection[Any]) -> tuple[list[Collectable], list[str]]:
        # Under the append lock nobody can alias or submit against these artifacts between the check and the record.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
        projections.catch_up(conn)
        found = collectable(conn, cutoff, user=user, stores=stores)
        if not found:
            return [], []
        ids = [c.artifact_id for c in found]
        batch = [NewEvent("gc", ArtifactsCollected(artifact_ids=ids, actor=app.user, reason=reason))]
        keys = [
            r[0]
            for r in conn.execute(
                _KEYS_OF_PRODUCERS, {"producers": sorted({c.producer_run_id for c in found}), "ids": ids}
            )
        ]
        invalidated = []
        for cache_key in keys:
            state = cache.load(conn, cache_key)
            if state.state == "succeeded":  # a key being recomputed right now is left alone
                why = f"gc collected {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}"
                batch.append(
                    NewEvent(
                        cache.stream_of(cache_key), CacheInvalidated(cache_key=cache_key, reason=why), state.version
                    )
                )
                invalidated.append(cache_key)
        projections.record(conn, batch, idempotency_key=key, meta=app.meta())
        return found, invalidated

    found, invalidated = app.db.run(decide_and_record)
    freed = 0
    for c in found:
        c.size_bytes = tree_size(c.path)
        root = object_root(c.path, c.hash)
        assert root is not None  # collectable() only returns object paths
        if remove_object(root, c.hash):
            freed += c.size_bytes
    return GcReport(artifacts=found, bytes_freed=freed, removed=True, cutoff=cutoff, invalidated_cache_keys=invalidated)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
