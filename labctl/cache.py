"""The cache: one stream per cache key decides, by optimistic concurrency, who computes it.

``cache-<key>`` holds CacheClaimed (a run became the producer), CacheJoined
(a run coalesced onto it), CacheReleased (the producer ended) and
CacheInvalidated (gc removed the outputs). Folding it gives the key's state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Literal

import msgspec
import psycopg

import events
from events.types import CacheClaimed, CacheInvalidated, CacheJoined, CacheReleased


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
    state = CacheState(key=key)
    for e in events.read_stream(conn, stream_of(key)):
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
