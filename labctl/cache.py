"""The cache: one stream per cache key decides, by optimistic concurrency, who computes it.

``cache-<key>`` holds CacheClaimed (a run became the producer), CacheJoined
(a run coalesced onto it), CacheReleased (the producer ended) and
CacheInvalidated (gc removed the outputs). Folding it gives the key's state;
``decide`` (at submission) and ``release`` (at the producer's end) append to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import msgspec
import psycopg

import events
from events import NewEvent
from events.queries import load_queries
from events.types import (
    CacheClaimed,
    CacheInvalidated,
    CacheJoined,
    CacheReleased,
    OutputSpec,
    RunCacheHit,
    RunCoalesced,
    RunFinished,
    RunSubmitted,
)
from labctl.executors.base import JobState
from labctl.linking import LinkedOutput, link_outputs, producer_outputs
from labctl.submissions import submission_of
from projections.runs import TERMINAL_STATES

QUERIES = load_queries("labctl", "runs.sql")


class CacheState(msgspec.Struct, kw_only=True):
    key: str
    version: int = 0
    state: Literal["free", "claimed", "succeeded"] = "free"
    producer: str | None = None
    followers: list[str] = []


def stream_of(key: str) -> str:
    return f"cache-{key}"


def cache_key(canonical_recipe: bytes, input_hashes: Iterable[tuple[str, str]], source: str | None) -> str:
    """sha256 over the canonical recipe, each input's (role, content hash) and the source fingerprint."""
    h = hashlib.sha256(canonical_recipe)
    for role, digest in sorted(input_hashes):
        h.update(f"\ninput:{role}={digest}".encode())
    if source:
        h.update(f"\nsource:{source}".encode())
    return h.hexdigest()


def load(conn: psycopg.Connection[Any], key: str) -> CacheState:
    return _fold(key, events.read_stream(conn, stream_of(key)))


def load_many(conn: psycopg.Connection[Any], keys: Iterable[str]) -> dict[str, CacheState]:
    """``load`` of several keys in one query (the runs of one batch)."""
    wanted = list(dict.fromkeys(keys))
    found = events.read_streams(conn, [stream_of(k) for k in wanted])
    return {k: _fold(k, found.get(stream_of(k), [])) for k in wanted}


def _fold(key: str, stream: Iterable[events.StoredEvent]) -> CacheState:
    state = CacheState(key=key)
    for e in stream:
        state.version = e.version
        d = e.data
        if isinstance(d, CacheClaimed):
            state.state, state.producer, state.followers = "claimed", d.run_id, []
        elif isinstance(d, CacheJoined):
            state.followers.append(d.run_id)
        elif isinstance(d, CacheReleased):
            state.state = "succeeded" if d.succeeded else "free"
            state.followers = []
            if not d.succeeded:
                state.producer = None
        elif isinstance(d, CacheInvalidated):
            state.state, state.producer, state.followers = "free", None, []
    return state


class Decision(msgspec.Struct, kw_only=True):
    """The cache's part of a submission: the events to append with it, and what the run became."""

    events: list[NewEvent]
    status: Literal["submitted", "cache_hit", "awaiting_peer"]
    producer_run_id: str | None = None


def decide(
    conn: psycopg.Connection[Any],
    run_id: str,
    user: str,
    key: str,
    outputs: Sequence[OutputSpec],
    state: CacheState | None = None,
) -> Decision:
    """Hit (link the producer's outputs), coalesce onto a producer in flight, or claim ``key``.

    Every event expects the cache stream's version, so of two racing submitters one wins. ``state``:
    the key's, when read already in this transaction (``load_many``).
    """
    run_stream = f"run-{run_id}"
    state = state or load(conn, key)
    cache_stream = stream_of(key)
    if state.state == "succeeded" and state.producer:
        linked = producer_outputs(conn, state.producer)
        if linked is not None:
            hit = NewEvent(run_stream, RunCacheHit(run_id=run_id, producer_run_id=state.producer, cache_key=key))
            batch = [hit, *link_outputs(conn, run_id, user, outputs, linked)]
            return Decision(events=batch, status="cache_hit", producer_run_id=state.producer)
        invalidated = NewEvent(cache_stream, CacheInvalidated(cache_key=key, reason="outputs collected"), state.version)
        claimed = NewEvent(cache_stream, CacheClaimed(cache_key=key, run_id=run_id))
        return Decision(events=[invalidated, claimed], status="submitted")
    if state.state == "claimed" and state.producer:
        batch = [
            NewEvent(cache_stream, CacheJoined(cache_key=key, run_id=run_id), state.version),
            NewEvent(run_stream, RunCoalesced(run_id=run_id, producer_run_id=state.producer, cache_key=key)),
        ]
        return Decision(events=batch, status="awaiting_peer", producer_run_id=state.producer)
    claimed = NewEvent(cache_stream, CacheClaimed(cache_key=key, run_id=run_id), state.version)
    return Decision(events=[claimed], status="submitted")


def release(
    conn: psycopg.Connection[Any],
    key: str,
    run_id: str,
    state: str,
    outcome: JobState,
    linked: Sequence[LinkedOutput],
    linked_followers: list[RunSubmitted],
    *,
    cacheable: bool = True,
    st: CacheState | None = None,
) -> list[NewEvent]:
    """Release the cache key if this run produces it, and end every run waiting on it.

    Followers that now link this run's outputs are added to ``linked_followers`` (their alias links follow the commit).
    ``st``: the key's state, when read already in this transaction (``load_many``).
    """
    st = st or load(conn, key)
    if st.state != "claimed" or st.producer != run_id:
        return []
    ok = state == "succeeded" and cacheable
    batch = [NewEvent(stream_of(key), CacheReleased(cache_key=key, run_id=run_id, succeeded=ok), st.version)]
    for follower in st.followers:
        row = conn.execute(QUERIES["run_version"], {"id": follower}).fetchone()
        if row is None or row[0] in TERMINAL_STATES:
            continue
        end = RunFinished(
            run_id=follower,
            state=state,
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            reason=f"its peer {run_id} ended {state}",
        )
        batch.append(NewEvent(f"run-{follower}", end, row[1]))
        if ok:
            fsub = submission_of(conn, follower)
            batch += link_outputs(conn, follower, fsub.user if fsub else "", fsub.outputs if fsub else [], linked)
            if fsub is not None:
                linked_followers.append(fsub)
    return batch
