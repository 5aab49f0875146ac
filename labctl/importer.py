"""`labctl import`: an original (Rust) labctl registry and its artifact store, brought into the log.

Lossless, idempotent, incremental. Each run reads the original's tables (schema
``public`` of the source database, any of its schema versions), compares them
with what earlier imports left in our read models, and appends only the
difference: new runs, users, artifacts, aliases, pipelines and eval requests,
and later changes to them (a status, a job id, new history rows, new outputs).
The events are planned in a thread while the batches before them are appended
(planning is Python, appending mostly the server's work). Each batch is
appended atomically, and a new entity's first event expects a new stream, so a
run killed half-way and run again ends as one clean run would have, and a run
with nothing new appends nothing. Cache entries come after every run (which
run owns a key is known only then): a re-run after an import stopped before
them computes the keys of the runs that import appended. A big import (a first
one) appends its batches without projecting and rebuilds the read models once
at the end, as ``replay`` does; killed before that, the next import rebuilds
them before comparing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from psycopg import sql

import projections
from events import EncodedBatch, EventMeta, NewEvent, last_position
from events.queries import load_queries
from events.types import (
    AliasImported,
    ArtifactImported,
    CacheClaimed,
    CacheReleased,
    EvalImported,
    InputRef,
    OriginalEvent,
    OriginalEventsImported,
    OutputLinked,
    PipelineImported,
    RegistryImported,
    RunImported,
    RunStatusImported,
    StageSpec,
    TrackingLink,
    UserImported,
)
from labctl import __version__, cache
from labctl.artifacts.hashing import dir_content_hash
from labctl.artifacts.store import META_FILENAME, OBJECTS_DIRNAME
from labctl.cache_key import Remembered, key_parts
from labctl.db import connect, describe_url, ensure_schema
from labctl.errors import InputError, UserError
from labctl.files.recipe import Recipe
from labctl.provenance import Source as RepoSource
from projections.ahead import ahead
from projections.engine import without_gc

Q = load_queries("labctl", "importer.sql")

_IMPORT_LOCK = 7146013
_BATCH_EVENTS = 5000
_ACTIVE = frozenset({"created", "submitted", "running"})
_SUCCESS = frozenset({"succeeded", "cache_hit"})
_json = msgspec.json.Decoder(dict[str, Any])
_recipe = msgspec.json.Decoder(Recipe)


class KindCounts(msgspec.Struct, kw_only=True):
    new: int = 0
    changed: int = 0
    unchanged: int = 0

    def tally(self, known: bool, same: bool) -> bool:
        """Count one entity the source holds; True when it is new or changed (to import)."""
        if known and same:
            self.unchanged += 1
            return False
        if known:
            self.changed += 1
        else:
            self.new += 1
        return True


class ImportReport(msgspec.Struct, kw_only=True):
    """What an import did (or, with ``dry_run``, would do)."""

    source: str
    dry_run: bool
    schema: str = ""  # which original schema version the source has
    kinds: dict[str, KindCounts] = {}
    events_appended: int = 0
    unmapped: list[str] = []  # what could not be brought over as it was, one line each
    integrity: list[str] = []  # artifacts whose bytes do not match their recorded hash, or are gone
    seconds: float = 0.0
    unchanged_since_last: bool = False  # the source's fingerprint equals the last import's: nothing read
    # Read models rebuilt from the log (a bulk import, or what an interrupted one left unprojected)
    # rather than projected batch by batch.
    rebuilt_read_models: bool = False

    def count(self, kind: str) -> KindCounts:
        return self.kinds.setdefault(kind, KindCounts())


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The original's times come as datetimes from the server (``to_timestamp``): its rows' OriginalEvents too.
_history = msgspec.json.Decoder(list[OriginalEvent])


def _ids(ids: Iterable[str]) -> str:
    """Ids (of runs, or stream names) as the one JSON array the queries take (``json_array_elements_text``)."""
    return msgspec.json.encode(list(ids)).decode()


# ------------------------------------------------------------------ the source


class Source:
    """The original registry's tables, read in one repeatable-read snapshot."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        tables = {r[0] for r in conn.execute(Q["source_tables"])}
        if not {"runs", "artifacts", "artifact_aliases"} <= tables:
            raise InputError("no original labctl registry there (no runs, artifacts and artifact_aliases tables)")
        self.tables = tables
        self.columns = {r[0] for r in conn.execute(Q["source_columns"])}
        self.schema = "0001 (users, in-place artifacts)" if "users" in tables else "eb54594 (content-addressed)"

    def query(self, name: str, **params: Any) -> Iterator[tuple[Any, ...]]:
        def column(name: str, col: str) -> sql.Composable:
            return sql.Identifier(col) if f"{name}.{col}" in self.columns else sql.SQL("NULL::text")

        text = sql.SQL(Q[name]).format(
            peer=column("runs", "coalesced_peer_run_id"),
            content_hash=column("artifacts", "content_hash"),
            alias_segment=column("artifacts", "alias_segment"),
        )
        # Binary: integers and times arrive without text parsing (JSON columns are read as text).
        with self.conn.cursor(binary=True) as cur:
            cur.execute(text, params or None)
            yield from cur.fetchall()  # one fetch: iterating a cursor row by row costs more than the query


_FINGERPRINTED = (
    "users",
    "pipelines",
    "runs",
    "artifacts",
    "artifact_aliases",
    "artifact_user_aliases",
    "run_inputs",
    "run_outputs",
    "eval_requests",
    "tracking",
)


def fingerprint(source: Source, stores: Iterable[Path]) -> str:
    """A digest of everything an import reads: equal digests, nothing new to import.

    Each table contributes its row count and the sum of its rows' versions (cheap, order-free,
    changed by any row written, as every update writes a new version); the append-only ``events``
    its count and newest id; stores
    their ``.meta.json`` count and newest mtime.
    """
    return _digest(table_marks(source), store_marks(stores))


def table_marks(source: Source) -> list[str]:
    """The tables' part of ``fingerprint``: a read of every row, in the source's snapshot."""
    parts: list[str] = []
    for table in _FINGERPRINTED:
        if table in source.tables:
            query = sql.SQL(Q["source_table_digest"]).format(table=sql.Identifier("public", table))
            parts.append(f"{table}:{source.conn.execute(query).fetchone()}")
    if "events" in source.tables:
        parts.append(f"events:{source.conn.execute(Q['source_events_mark']).fetchone()}")
    return parts


def store_marks(stores: Iterable[Path]) -> list[str]:
    """The stores' part of ``fingerprint``, as they are now (before the planner reads them)."""
    parts: list[str] = []
    for root in stores:
        metas = list((Path(root) / OBJECTS_DIRNAME).glob(f"*/*/{META_FILENAME}"))
        newest = max((m.stat().st_mtime_ns for m in metas), default=0)
        parts.append(f"store:{root}:{len(metas)}:{newest}")
    return parts


def _digest(tables: list[str], stores: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join([*tables, *stores]).encode()).hexdigest()


def _import_stream(report: ImportReport) -> str:
    import hashlib

    return "import-" + hashlib.sha256(report.source.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ the target


class Target(msgspec.Struct, kw_only=True):
    """What earlier imports (and our own runs) already put into the read models."""

    runs: dict[str, tuple[bool, str | None, str | None, datetime | None, int | None, str | None]]
    outputs: set[tuple[str, str]]
    artifacts: set[str]
    aliases: dict[tuple[str, str], tuple[str, datetime]]
    pipelines: dict[str, tuple[str, datetime | None, int]]
    evals: dict[str, tuple[str | None, int | None, str, bool]]
    users: set[str]
    unowned_mark: int


def _target(conn: psycopg.Connection[Any]) -> Target:
    return Target(
        runs={r[0]: tuple(r[1:]) for r in conn.execute(Q["target_runs"])},
        outputs={(r[0], r[1]) for r in conn.execute(Q["target_outputs"])},
        artifacts={r[0] for r in conn.execute(Q["target_artifacts"])},
        aliases={(r[0], r[1]): (r[2], r[3]) for r in conn.execute(Q["target_aliases"])},
        pipelines={r[0]: (r[1], r[2], r[3]) for r in conn.execute(Q["target_pipelines"])},
        evals={r[0]: (r[1], r[2], r[3], r[4]) for r in conn.execute(Q["target_evals"])},
        users={r[0] for r in conn.execute(Q["target_users"])},
        unowned_mark=int((conn.execute(Q["target_unowned_mark"]).fetchone() or (0,))[0] or 0),
    )


def _existing_streams(conn: psycopg.Connection[Any] | None, streams: list[str]) -> set[str]:
    if conn is None or not streams:
        return set()
    return {r[0] for r in conn.execute(Q["target_streams"], {"streams": _ids(streams)})}


# ------------------------------------------------------------------- artifacts


class _Artifact(msgspec.Struct, kw_only=True):
    id: str
    kind: str
    path: str
    content_hash: str | None
    producer_run_id: str | None
    metadata: dict[str, Any]
    created_at: datetime
    user: str
    alias_segment: str | None


def _strip_algo(h: str | None) -> str | None:
    return h.split(":", 1)[1] if h and h.startswith("sha256:") else h


def _path_hash(path: str) -> str:
    import hashlib

    return hashlib.sha256(path.encode()).hexdigest()


def check_integrity(a: _Artifact, verify: bool) -> tuple[str, str, str | None]:
    """``(hash, integrity, observed hash)`` of an original artifact, looking at its bytes."""
    recorded = _strip_algo(a.content_hash)
    if recorded is None:
        # The in-place layout: the id and hash name the canonical path, not the bytes.
        return _path_hash(a.path), ("path_identity" if os.path.exists(a.path) else "missing"), None
    if not verify:
        return recorded, "not_checked", None
    if not os.path.exists(a.path):
        return recorded, "missing", None
    observed = dir_content_hash(a.path, exclude_top=[META_FILENAME])
    if observed != recorded:
        return recorded, "mismatch", observed
    return recorded, "verified", None


def store_meta_artifacts(roots: Iterable[Path]) -> Iterator[_Artifact]:
    """Artifacts described only by ``_objects/<h[:2]>/<h>/.meta.json`` files of the given stores."""
    for root in roots:
        objects = Path(root) / OBJECTS_DIRNAME
        for meta_path in sorted(objects.glob(f"*/*/{META_FILENAME}")):
            try:
                meta = _json.decode(meta_path.read_bytes())
                created = meta.get("created_at")
                epoch = int(created) if isinstance(created, int | float) else int(meta_path.stat().st_mtime)
                yield _Artifact(
                    id=str(meta["id"]),
                    kind=str(meta["kind"]),
                    path=str(meta_path.parent),
                    content_hash=meta.get("content_hash") or meta.get("hash") or meta_path.parent.name,
                    producer_run_id=meta.get("producer_run_id"),
                    metadata=meta.get("metadata") or {},
                    created_at=_EPOCH + timedelta(seconds=epoch),
                    user=str(meta.get("user") or meta.get("created_by") or "unknown"),
                    alias_segment=meta.get("alias"),
                )
            except (OSError, KeyError, ValueError, msgspec.DecodeError) as exc:
                yield _Artifact(
                    id="",
                    kind="",
                    path=str(meta_path),
                    content_hash=None,
                    producer_run_id=None,
                    metadata={"error": str(exc)},
                    created_at=_EPOCH,
                    user="",
                    alias_segment=None,
                )


# ---------------------------------------------------------------------- plan


def batches(groups: Iterable[list[NewEvent]], size: int) -> Iterator[list[NewEvent]]:
    """``groups`` joined into batches of about ``size`` events, never splitting a group (one entity's events)."""
    batch: list[NewEvent] = []
    for group in groups:
        if batch and len(batch) + len(group) > size:
            yield batch
            batch = []
        batch.extend(group)
    if batch:
        yield batch


def _pipeline_status(runs: list[tuple[str, datetime | None]]) -> tuple[str, datetime | None]:
    statuses = {s for s, _ in runs}
    if statuses & _ACTIVE or not runs:
        return "running", None
    ended = max((f for _, f in runs if f is not None), default=None)
    return ("succeeded" if statuses <= _SUCCESS else "failed"), ended


def _stages(runs: list[tuple[Any, ...]]) -> list[StageSpec]:
    """A pipeline's stages from its runs: in order of creation, parents from ``dependency_on``."""
    by_key: dict[str, str] = {}
    for r in runs:
        by_key[r[0]] = r[5] or r[0]
        if r[2]:
            by_key[str(r[2])] = r[5] or r[0]
    order: dict[str, list[str]] = {}
    parents: dict[str, list[str]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: (r[7], r[0])):
        stage = r[5] or r[0]
        order.setdefault(stage, []).append(r[0])
        dep = _json.decode(r[6]) if r[6] else {}
        for ref in dep.get("afterok", []) or []:
            parent = by_key.get(str(ref))
            if parent and parent != stage and parent not in parents[stage]:
                parents[stage].append(parent)
    return [StageSpec(name=name, run_ids=ids, parents=parents.get(name, [])) for name, ids in order.items()]


def _repo_commit(context: dict[str, Any]) -> str | None:
    for key in ("repo_commit", "git_commit", "commit"):
        value = context.get(key)
        if isinstance(value, str):
            return value
    source = context.get("source")
    if isinstance(source, dict) and isinstance(source.get("commit"), str):
        return str(source["commit"])
    return None


def _alias_of_input(recipe: dict[str, Any], role: str) -> str | None:
    spec = (recipe.get("inputs") or {}).get(role)
    if isinstance(spec, dict) and isinstance(spec.get("artifact"), str):
        return str(spec["artifact"])
    return None


def _tracking_link(row: tuple[Any, ...]) -> TrackingLink:
    return TrackingLink(entity=row[1], project=row[2], url=row[3], group=row[4], source=row[5], created_at=row[6])


class _Planner:
    """Everything the source holds that the target lacks, as groups of events (each group one entity's,
    never split across batches).

    In two steps, so that appending starts before the planning ends: the constructor reads what every
    later decision needs (artifacts, the runs' light columns, outputs, tracking, the original's event
    marks) and finds the new runs; ``groups`` then builds the events, the new runs' chunk by chunk as
    their full rows are read, and may run in a thread of its own while its batches are appended.

    A new run's cache entry comes after every new run (which run owns a key is known only then), in
    batches of its own: an import stopped between a run and its entry leaves a run a re-run no longer
    sees as new, so the re-run also computes the keys of the runs an unfinished import of this source
    appended (``recovering``).
    """

    def __init__(
        self,
        source: Source,
        target: Target,
        report: ImportReport,
        *,
        stores: Iterable[Path],
        verify: bool,
        keys: _OurKeys | None,
        recovering: set[str],
    ) -> None:
        self.source, self.target, self.report, self.verify, self.keys = source, target, report, verify, keys
        artifacts: dict[str, _Artifact] = {}
        for r in source.query("source_artifacts"):
            artifacts[r[0]] = _Artifact(
                id=r[0],
                kind=r[1],
                path=r[2],
                content_hash=r[3],
                producer_run_id=r[4],
                metadata=_json.decode(r[5]),
                created_at=r[6],
                user=r[7],
                alias_segment=r[8],
            )
        for a in store_meta_artifacts(stores):
            if not a.id:
                report.unmapped.append(f"store: cannot read {a.path}: {a.metadata.get('error')}")
            elif a.id not in artifacts:
                artifacts[a.id] = a
        self.artifacts = artifacts
        self.input_hashes: dict[str, str | None] = {}
        self.light = list(source.query("source_runs_light"))
        self.tracking = {r[0]: r for r in source.query("source_tracking")} if "tracking" in source.tables else {}
        self.marks = (
            {r[0]: (r[1], r[2]) for r in source.query("source_event_marks")} if "events" in source.tables else {}
        )
        self.outputs_by_run: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for run_id, role, artifact_id in source.query("source_outputs"):
            self.outputs_by_run[run_id].append((role, artifact_id))
        self.new_ids = [r[0] for r in self.light if r[0] not in target.runs]
        # Succeeded runs an unfinished import appended (whose cache entries may be missing).
        self.recovering = [
            r[0]
            for r in self.light
            if r[1] == "succeeded" and r[0] in recovering and (known := target.runs.get(r[0])) is not None and known[0]
        ]

    def estimate(self) -> int:
        """About how many events ``groups`` yields: new artifacts and new runs (changes to known ones aside)."""
        artifacts = sum(1 for a in self.artifacts if a not in self.target.artifacts)
        marks, outputs = self.marks, self.outputs_by_run
        return artifacts + sum(
            2 + len(outputs.get(i, ())) if i in marks else 1 + len(outputs.get(i, ())) for i in self.new_ids
        )

    def groups(self) -> Iterator[list[NewEvent]]:
        yield from self._users()
        yield from self._artifacts()
        history_after: dict[str, int] = {}
        yield from self._changed_runs(history_after)
        producers: dict[str, tuple[datetime, str]] = {}
        yield from self._new_runs(producers)
        yield from self._cache_entries(producers)
        yield from self._history(history_after)
        yield from self._aliases()
        yield from self._pipelines()
        yield from self._evals()
        if "coalesce_claims" in self.source.tables:
            claims = self.source.conn.execute(Q["source_coalesce_claims"]).fetchone()
            if claims and claims[0]:
                self.report.unmapped.append(
                    f"{claims[0]} coalesce claims: in-flight slots are not imported; each run's producer_run_id "
                    "keeps whom it followed"
                )

    # ------------------------------------------------------------ users, artifacts

    def _users(self) -> Iterator[list[NewEvent]]:
        users: dict[str, tuple[datetime, str | None]] = {}
        if "users" in self.source.tables:
            users = {r[0]: (r[1], r[2]) for r in self.source.query("source_users")}
        seen_users: dict[str, datetime] = {}  # user -> their first run's or artifact's time
        for user, at in itertools.chain(
            ((r[8], r[7]) for r in self.light), ((a.user, a.created_at) for a in self.artifacts.values() if a.user)
        ):
            if (first := seen_users.get(user)) is None or at < first:
                seen_users[user] = at
        for name, first in seen_users.items():
            users.setdefault(name, (first, None))
        kc = self.report.count("users")
        for name, (created, role) in sorted(users.items()):
            if name in self.target.users:
                kc.unchanged += 1
                continue
            kc.new += 1
            yield [NewEvent(f"user-{name}", UserImported(name=name, created_at=created, pg_role=role), 0)]

    def _artifacts(self) -> Iterator[list[NewEvent]]:
        kc = self.report.count("artifacts")
        for a in self.artifacts.values():
            if a.id in self.target.artifacts:
                kc.unchanged += 1
                continue
            kc.new += 1
            digest, integrity, observed = check_integrity(a, self.verify)
            if integrity in ("mismatch", "missing"):
                detail = f" (bytes hash to {observed})" if observed else ""
                self.report.integrity.append(f"{a.id} {a.path}: {integrity}{detail}")
            yield [
                NewEvent(
                    f"artifact-{a.id}",
                    ArtifactImported(
                        artifact_id=a.id,
                        hash=digest,
                        kind=a.kind,
                        path=a.path,
                        user=a.user,
                        created_at=a.created_at,
                        integrity=integrity,
                        producer_run_id=a.producer_run_id,
                        metadata=a.metadata,
                        observed_hash=observed,
                        alias_segment=a.alias_segment,
                    ),
                    0,
                )
            ]

    # ------------------------------------------------------------------------ runs

    def _output_events(self, run_id: str, pairs: Iterable[tuple[str, str]]) -> list[NewEvent]:
        out = []
        for role, artifact_id in sorted(pairs):
            a = self.artifacts.get(artifact_id)
            step = a.metadata.get("step") if a is not None else None
            out.append(
                NewEvent(
                    f"run-{run_id}",
                    OutputLinked(
                        run_id=run_id,
                        role=role,
                        artifact_id=artifact_id,
                        path=a.path if a is not None else "",
                        step=step if isinstance(step, int) else None,
                    ),
                )
            )
        return out

    def _changed_runs(self, history_after: dict[str, int]) -> Iterator[list[NewEvent]]:
        """Status, job id, tracking, outputs and history that runs imported before gained since."""
        kc = self.report.count("runs")
        kc.new = len(self.new_ids)
        for r in self.light:
            run_id, status, job_id, finished = r[0], r[1], r[2], r[3]
            known = self.target.runs.get(run_id)
            if known is None:
                continue
            imported, old_status, old_job, old_finished, last_event, old_url = known
            if not imported:
                kc.unchanged += 1
                self.report.unmapped.append(f"run {run_id}: the id is already used by a run recorded here; left out")
                continue
            events: list[NewEvent] = []
            link = self.tracking.get(run_id)
            new_link = _tracking_link(link) if link is not None and link[3] != old_url else None
            if (status, job_id, finished) != (old_status, old_job, old_finished) or new_link is not None:
                events.append(
                    NewEvent(
                        f"run-{run_id}",
                        RunStatusImported(
                            run_id=run_id, status=status, finished_at=finished, job_id=job_id, tracking=new_link
                        ),
                    )
                )
            outputs = self.outputs_by_run.get(run_id, [])
            events.extend(
                self._output_events(run_id, [(ro, a) for ro, a in outputs if (run_id, a) not in self.target.outputs])
            )
            mark = self.marks.get(run_id)
            if mark is not None and mark[0] > (last_event or 0):
                history_after[run_id] = last_event or 0
            if events:
                kc.changed += 1
                yield events
            elif run_id not in history_after:
                kc.unchanged += 1
            else:
                kc.changed += 1

    def _full_runs(
        self, ids: list[str]
    ) -> Iterator[tuple[tuple[Any, ...], dict[str, Any], dict[str, Any], list[InputRef]]]:
        """Each run's full row, decoded recipe and context, and inputs; read 5,000 runs at a time."""
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            inputs: dict[str, list[tuple[str, str | None, str]]] = defaultdict(list)
            for run_id, role, artifact_id, resolved in self.source.query("source_inputs", ids=_ids(chunk)):
                inputs[run_id].append((role, artifact_id, resolved))
            for r in self.source.query("source_runs_full", ids=_ids(chunk)):
                recipe = _json.decode(r[8])
                refs = [
                    InputRef(
                        role=role,
                        type="artifact" if artifact_id else "external",
                        path=resolved,
                        artifact_id=artifact_id,
                        alias=_alias_of_input(recipe, role),
                        hash=self._input_hash(artifact_id) if artifact_id else None,
                    )
                    for role, artifact_id, resolved in sorted(inputs.get(r[0], []))
                ]
                yield r, recipe, _json.decode(r[9]), refs

    def _input_hash(self, artifact_id: str) -> str | None:
        """``check_hash_of`` the artifact, once per artifact (inputs share them)."""
        if (found := self.input_hashes.get(artifact_id)) is None:
            found = self.input_hashes[artifact_id] = check_hash_of(self.artifacts.get(artifact_id))
        return found

    def _new_runs(self, producers: dict[str, tuple[datetime, str]]) -> Iterator[list[NewEvent]]:
        """The new runs, each with its outputs and history, as their rows are read; their cache keys
        go into ``producers`` (key -> the latest success's (created_at, run id))."""
        # A new run's history goes in its own group: projected with it, its row is at hand. One query for
        # all new runs (an index scan per chunk costs more than the whole table read once).
        history = self._history_of({i: 0 for i in self.new_ids if i in self.marks})
        for r, recipe, context, refs in self._full_runs(self.new_ids):
            link = self.tracking.get(r[0])
            imported_run = RunImported(
                run_id=r[0],
                name=r[1],
                user=r[15],
                status=r[3],
                executor=str(context.get("executor") or context.get("scheduler") or "slurm"),
                run_dir=r[5],
                recipe=recipe,
                recipe_hash=r[2],
                context=context,
                repo=r[6],
                source_path=r[7],
                created_at=r[10],
                finished_at=r[11],
                job_id=r[4],
                cache_key=r[16],
                producer_run_id=r[17],
                pipeline_id=r[12],
                stage_name=r[14],
                dependency_on=_json.decode(r[13]) if r[13] else None,
                inputs=refs,
                tracking=_tracking_link(link) if link is not None else None,
                repo_commit=_repo_commit(context),
            )
            group = [
                NewEvent(f"run-{r[0]}", imported_run, 0),
                *self._output_events(r[0], self.outputs_by_run.get(r[0], [])),
            ]
            rows = history.pop(r[0], None)
            if rows:
                self.report.count("history").new += len(rows)
                group.append(NewEvent(f"run-{r[0]}", OriginalEventsImported(run_id=r[0], events=rows)))
            yield group
            if r[3] == "succeeded":
                self._claim(producers, r, refs, imported_run.repo_commit)
        for r, _recipe, context, refs in self._full_runs(self.recovering):
            self._claim(producers, r, refs, _repo_commit(context))

    def _claim(
        self, producers: dict[str, tuple[datetime, str]], r: tuple[Any, ...], refs: list[InputRef], commit: str | None
    ) -> None:
        if self.keys is None:
            return
        key = self.keys.key(r[8], refs, commit)
        if key is None:
            self.keys.without += 1
        elif (have := producers.get(key)) is None or (r[10], r[0]) > have:
            producers[key] = (r[10], r[0])  # the latest success wins

    def _cache_entries(self, producers: dict[str, tuple[datetime, str]]) -> Iterator[list[NewEvent]]:
        """A succeeded run's recipe, resubmitted unchanged here, is a cache hit on it: its key as we compute it."""
        if self.keys is None:
            return
        kc = self.report.count("cache entries")
        existing = _existing_streams(self.keys.conn, [cache.stream_of(k) for k in producers])
        for key, (_created, run_id) in sorted(producers.items()):
            if cache.stream_of(key) in existing:
                kc.unchanged += 1
                continue
            kc.new += 1
            yield [
                NewEvent(cache.stream_of(key), CacheClaimed(cache_key=key, run_id=run_id), 0),
                NewEvent(cache.stream_of(key), CacheReleased(cache_key=key, run_id=run_id, succeeded=True)),
            ]
        if self.keys.without:
            self.report.unmapped.append(
                f"{self.keys.without} succeeded runs will not be cache hits here: their recipe is not in a shape "
                "this labctl reads, or it names a repo without a recorded commit"
            )

    def _history(self, history_after: dict[str, int]) -> Iterator[list[NewEvent]]:
        """The original's events recorded since the last import, of known runs and of no run."""
        if history_after:
            by_run = self._history_of(history_after)
            kc = self.report.count("history")
            for run_id in sorted(history_after):
                later = by_run.get(run_id)
                if later:
                    kc.new += len(later)
                    yield [NewEvent(f"run-{run_id}", OriginalEventsImported(run_id=run_id, events=later))]
        if "events" in self.source.tables and self.marks.get(None, (0, 0))[0] > self.target.unowned_mark:
            found = next(self.source.query("source_history_unowned", after=self.target.unowned_mark))[0]
            rows = _history.decode(found) if found is not None else []
            if rows:
                self.report.count("history").new += len(rows)
                yield [NewEvent("original-events", OriginalEventsImported(events=rows))]

    def _history_of(self, after: dict[str, int]) -> dict[str, list[OriginalEvent]]:
        """The original's events rows of these runs after the id given for each, in order of id."""
        if not after:
            return {}
        found = self.source.query(
            "source_history", after=msgspec.json.encode(after).decode(), floor=min(after.values())
        )
        return {run_id: _history.decode(rows) for run_id, rows in found}

    def _aliases(self) -> Iterator[list[NewEvent]]:
        """Global and per-user aliases the target lacks or has older."""
        # Per-user aliases first, then the global namespace (its owner is the artifact's user):
        # where both name the same (user, alias), the global one is what the original resolved.
        wanted: dict[tuple[str, str], tuple[str, datetime, str | None, str]] = {}
        if "artifact_user_aliases" in self.source.tables:
            for user, alias, kind, artifact_id, created in self.source.query("source_user_aliases"):
                if (user, alias) in wanted:
                    kept = wanted[(user, alias)][2]
                    self.report.unmapped.append(
                        f"alias {user}/{alias} ({kind}): one name per user here; kept the {kept} one"
                    )
                    continue
                wanted[(user, alias)] = (artifact_id, created, kind, "user")
        for alias, artifact_id, created in self.source.query("source_aliases"):
            target_artifact = self.artifacts.get(artifact_id)
            owner = target_artifact.user if target_artifact is not None else "unknown"
            if target_artifact is None:
                self.report.unmapped.append(
                    f"alias {alias}: names artifact {artifact_id}, which the registry does not hold"
                )
            wanted[(owner, alias)] = (artifact_id, created, None, "global")
        kc = self.report.count("aliases")
        for (user, alias), (artifact_id, created, kind, scope) in sorted(wanted.items()):
            have = self.target.aliases.get((user, alias))
            set_at = created
            # An alias changed here after the original last set it stays as it is here.
            if not kc.tally(have is not None, have is not None and (have[0] == artifact_id or have[1] >= set_at)):
                continue
            yield [
                NewEvent(
                    f"alias-{user}/{alias}",
                    AliasImported(
                        user=user, alias=alias, artifact_id=artifact_id, set_at=set_at, kind=kind, scope=scope
                    ),
                )
            ]

    def _pipelines(self) -> Iterator[list[NewEvent]]:
        """Pipelines, their stages (from their runs) and status."""
        runs_of: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for r in self.light:
            if r[4]:
                runs_of[r[4]].append(r)
        kc = self.report.count("pipelines")
        for pid, name, path, user, created in self.source.query("source_pipelines"):
            members = runs_of.get(pid, [])
            stages = _stages(members)
            status, ended = _pipeline_status([(m[1], m[3]) for m in members])
            pipe_have = self.target.pipelines.get(pid)
            if not kc.tally(pipe_have is not None, pipe_have == (status, ended, len(stages))):
                continue
            yield [
                NewEvent(
                    f"pipeline-{pid}",
                    PipelineImported(
                        pipeline_id=pid,
                        name=name,
                        user=user,
                        stages=stages,
                        status=status,
                        created_at=created,
                        file_path=path,
                        finished_at=ended,
                    ),
                    0 if pipe_have is None else None,
                )
            ]

    def _evals(self) -> Iterator[list[NewEvent]]:
        """Eval requests, with their attempts and the metrics their eval run recorded."""
        if "eval_requests" not in self.source.tables:
            return
        kc = self.report.count("evals")
        for key, ckpt, recipe_hash, policy, run_id, state, attempts, user, created, updated in self.source.query(
            "source_evals"
        ):
            metrics = _eval_metrics(run_id, self.outputs_by_run, self.artifacts)
            eval_have = self.target.evals.get(key)
            if not kc.tally(eval_have is not None, eval_have == (state, attempts, run_id or "", metrics is not None)):
                continue
            ck = self.artifacts.get(ckpt)
            step = ck.metadata.get("step") if ck is not None else None
            yield [
                NewEvent(
                    f"eval-{key}",
                    EvalImported(
                        eval_key=key,
                        policy=policy,
                        checkpoint_artifact_id=ckpt,
                        eval_recipe_hash=recipe_hash,
                        state=state,
                        attempts=int(attempts),
                        user=user,
                        requested_at=created,
                        updated_at=updated,
                        run_id=run_id,
                        step=step if isinstance(step, int) else None,
                        metrics=metrics,
                    ),
                    0 if eval_have is None else None,
                )
            ]


class _OurKeys:
    """The cache key ``submit`` gives a succeeded run's recipe resubmitted unchanged, or None when it cannot tell.

    The same parts as there (``labctl.cache_key``): for a recipe with a repo, its recorded commit
    taken as a clean checkout; inputs and named scripts as they are on disk now, each path and each
    distinct recipe looked at once per import (runs share them).
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.lookups = Remembered(conn)
        self.recipes: dict[str, Any] = {}  # recipe JSON -> Recipe, or None when not one this labctl reads
        self.without = 0  # succeeded runs without a key

    def key(self, recipe_json: str, inputs: list[InputRef], commit: str | None) -> str | None:
        if recipe_json in self.recipes:
            recipe = self.recipes[recipe_json]
        else:
            try:
                recipe = _recipe.decode(recipe_json)
            except (msgspec.ValidationError, msgspec.DecodeError, TypeError, ValueError):
                recipe = None
            self.recipes[recipe_json] = recipe
        if recipe is None or (recipe.repo is not None and commit is None):
            return None
        source = RepoSource(repo=recipe.repo, path="", commit=commit, dirty=False, diff=None) if recipe.repo else None
        return key_parts(self.conn, recipe, inputs, source, self.lookups).key


def check_hash_of(a: _Artifact | None) -> str | None:
    """The hash an input's artifact is known by here (see ``check_integrity``), without reading bytes."""
    if a is None:
        return None
    return _strip_algo(a.content_hash) or _path_hash(a.path)


def _eval_metrics(
    run_id: str | None, outputs_by_run: dict[str, list[tuple[str, str]]], artifacts: dict[str, _Artifact]
) -> dict[str, Any] | None:
    """The result an eval run's ``eval_result`` output recorded, if it has one."""
    for _role, artifact_id in outputs_by_run.get(run_id or "", []):
        a = artifacts.get(artifact_id)
        if a is not None and isinstance(a.metadata.get("result"), dict):
            return dict(a.metadata["result"])
    return None


# ----------------------------------------------------------------------- run


def import_registry(
    database_url: str,
    source_url: str,
    *,
    actor: str,
    stores: Iterable[Path] = (),
    dry_run: bool = False,
    verify: bool = True,
    batch_events: int = _BATCH_EVENTS,
    on_batch: Callable[[int], None] | None = None,
    bulk: bool | None = None,
) -> ImportReport:
    """Bring the original registry at ``source_url`` into labctl's database at ``database_url``.

    ``stores`` are artifact roots whose ``_objects/*/*/.meta.json`` are read too.
    Safe to repeat and to interrupt; ``dry_run`` reports and writes nothing. ``bulk``: append
    everything first and rebuild the read models once (None: when that is faster, by size).
    """
    started = time.perf_counter()
    report = ImportReport(source=describe_url(source_url), dry_run=dry_run)
    try:
        src_conn = psycopg.connect(source_url, autocommit=False)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot reach the original registry at {describe_url(source_url)}: {first}") from None
    with src_conn, connect(database_url) as conn:
        src_conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        src_conn.execute("SET LOCAL TIME ZONE 'UTC'")  # times read as timestamptz come in UTC, as they were stored
        source = Source(src_conn)
        report.schema = source.schema
        has_schema = not (dry_run and _has_no_schema(conn))
        if not has_schema:
            target = Target(
                runs={}, outputs=set(), artifacts=set(), aliases={}, pipelines={}, evals={}, users=set(), unowned_mark=0
            )
        else:
            if not dry_run:
                ensure_schema(conn, beside_original=True)
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (_IMPORT_LOCK,)).fetchone()[0]:  # type: ignore[index]
                raise UserError("another labctl import into this database is running; try again when it ends")
        stores = list(stores)
        stored = store_marks(stores)
        stream = _import_stream(report)
        last = conn.execute(Q["target_last_fingerprint"], {"stream": stream}).fetchone() if has_schema else None
        # The tables' digest reads every row: needed now only to compare with an earlier import's. A first
        # import has it computed after its last event is planned (same snapshot), while the appends go on.
        digest = _digest(table_marks(source), stored) if last is not None else None
        if has_schema:
            if last is not None and last[0] == digest:
                report.unchanged_since_last = True
                return _finished(report, started)
            if not dry_run:
                # What an interrupted import appended is in the read models (a bulk one's by a rebuild).
                report.rebuilt_read_models = projections.bring_up_to_date(conn)
            target = _target(conn)
        if dry_run:
            planner = _Planner(source, target, report, stores=stores, verify=verify, keys=None, recovering=set())
            report.events_appended = sum(len(group) for group in planner.groups())
            return _finished(report, started)
        # Hundreds of thousands of long-lived objects and no cycles: the cyclic collector would only rescan
        # them (a fifth of the planning's CPU).
        with connect(database_url) as keys_conn, without_gc():
            planner = _Planner(
                source,
                target,
                report,
                stores=stores,
                verify=verify,
                keys=_OurKeys(keys_conn),
                recovering=_unfinished_import(conn, stream, target),
            )
            digests = [digest] if digest is not None else []

            def planned() -> Iterator[list[NewEvent]]:
                yield from planner.groups()
                if not digests:
                    digests.append(_digest(table_marks(source), stored))

            _append(
                conn,
                planned(),
                planner.estimate(),
                report,
                actor=actor,
                bulk=bulk,
                batch_events=batch_events,
                on_batch=on_batch,
            )
        # Last, once everything is in: what the source looked like, so an unchanged one is seen at a glance.
        done = RegistryImported(source=report.source, fingerprint=digests[0], events=report.events_appended)
        projections.record(conn, [NewEvent(stream, done)], meta=_meta(actor, report))
    return _finished(report, started)


def _finished(report: ImportReport, started: float) -> ImportReport:
    report.seconds = time.perf_counter() - started
    return report


def _meta(actor: str, report: ImportReport) -> EventMeta:
    return EventMeta(
        actor=actor, host=socket.gethostname(), labctl_version=__version__, correlation_id=f"import {report.source}"
    )


def _unfinished_import(conn: psycopg.Connection[Any], stream: str, target: Target) -> set[str]:
    """Runs imported since this source's last finished import: an import stopped before its end appended them."""
    if not any(known[0] for known in target.runs.values()):
        return set()
    return {r[0] for r in conn.execute(Q["target_imported_since"], {"stream": stream})}


def _append(
    conn: psycopg.Connection[Any],
    groups: Iterable[list[NewEvent]],
    estimate: int,
    report: ImportReport,
    *,
    actor: str,
    bulk: bool | None,
    batch_events: int,
    on_batch: Callable[[int], None] | None,
) -> None:
    """Append the planner's ``groups`` (about ``estimate`` events), planned in a thread while the batches
    before are appended.

    The planning is Python, the appending mostly the server's work: on two cores they overlap.
    """
    if bulk is None:
        bulk = projections.rebuild_pays(estimate, last_position(conn) + estimate)
    meta = _meta(actor, report)

    def appended(n: int) -> None:
        report.events_appended = n
        if on_batch is not None:
            on_batch(n)

    # Each batch is encoded in the planning thread too: this one only sends it, so the server appends one
    # batch while the next is planned and encoded.
    encoded = (EncodedBatch(batch) for batch in batches(groups, batch_events))
    planning = ahead(encoded, depth=4, name="labctl-plan")
    with _prompt_handoff(), contextlib.closing(planning) as planned:
        first = next(planned, None)
        if first is None:
            return
        todo = itertools.chain([first], planned)
        if bulk:
            # Killed before the rebuild, the read models lag the log: the next import rebuilds them first.
            projections.append_and_rebuild(conn, todo, meta=meta, on_batch=appended)
            report.rebuilt_read_models = True
        else:
            for batch in todo:
                projections.record(conn, batch, meta=meta)
                appended(report.events_appended + len(batch))


@contextlib.contextmanager
def _prompt_handoff() -> Iterator[None]:
    """Switch threads every 0.5 ms instead of 5 while planning and appending run at once.

    The appending thread waits on the server many times per batch (each chunk of a large query
    sent, each result read) and needs the interpreter back after each wait; with the planning
    thread busy, the default interval kept it (and the server) idle up to 5 ms each time. In an
    A/B of the 100k-run import on a loaded machine: 108 and 121 s against 136 and 146 s.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, 0.0005))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _has_no_schema(conn: psycopg.Connection[Any]) -> bool:
    from labctl.db import current_schema_version

    return current_schema_version(conn) is None


def resolve_source(ref: str | None, database_url: str) -> tuple[str, list[Path]]:
    """The source URL and artifact roots of ``--from``: a URL, an old cluster.toml, or (None) our database."""
    if ref is None:
        return database_url, []
    if "://" in ref or "=" in ref:
        return ref, []
    return cluster_source(Path(ref))


def cluster_source(path: Path) -> tuple[str, list[Path]]:
    """The registry URL in an original cluster.toml's ``[postgres]`` and its artifact roots."""
    from labctl.db import postgres_url
    from labctl.files import load_cluster_config

    config = load_cluster_config(path)
    if config.postgres is None:
        raise InputError(f"--from {path}: no [postgres] section (the original registry's database)")
    roots = config.filesystem.artifact_roots.values()
    return postgres_url(config.postgres), sorted({Path(root) for root in roots})


def print_report(report: ImportReport, echo: Callable[[str], None]) -> None:
    if report.unchanged_since_last:
        echo(f"nothing changed in {report.source} since the last import ({report.seconds:.1f}s)")
        return
    verb = "would import" if report.dry_run else "imported"
    echo(f"{verb} from {report.source} (original schema {report.schema}):")
    echo(f"  {'kind':<16}{'new':>9}{'changed':>9}{'unchanged':>11}")
    for kind, c in report.kinds.items():
        echo(f"  {kind:<16}{c.new:>9}{c.changed:>9}{c.unchanged:>11}")
    echo(f"  events {'to append' if report.dry_run else 'appended'}: {report.events_appended} in {report.seconds:.1f}s")
    if report.rebuilt_read_models:
        echo("  read models rebuilt from the log once, not batch by batch")
    if report.integrity:
        echo(f"artifacts not as recorded ({len(report.integrity)}; imported, marked, not trusted):")
        for line in report.integrity:
            echo(f"  {line}")
    if report.unmapped:
        echo(f"not mapped as they were ({len(report.unmapped)}):")
        for line in report.unmapped:
            echo(f"  {line}")
