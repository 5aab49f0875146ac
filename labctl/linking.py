"""A run whose outputs are another run's artifacts (a cache hit, a coalesced follower):
the producer's linked outputs, the events that link them, and the alias symlinks on disk."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from events import NewEvent
from events.queries import load_queries
from events.types import AliasSet, OutputLinked, OutputSpec
from labctl.artifacts import set_alias_link
from labctl.files import ClusterConfig

QUERIES = load_queries("labctl", "artifacts.sql")

log = logging.getLogger(__name__)

#: output type -> the artifact kind it registers as
KIND_OF_OUTPUT = {"checkpoint_stream": "checkpoint"}


class LinkedOutput(msgspec.Struct, frozen=True):
    """One output of a run: its role, the artifact, where it is, and its step (checkpoint streams)."""

    role: str
    artifact_id: str
    path: str
    step: int | None = None


def producer_outputs(conn: psycopg.Connection[Any], producer: str) -> list[LinkedOutput] | None:
    """The producer's linked outputs; None if any of them was collected."""
    rows = conn.execute(QUERIES["producer_outputs"], {"run_id": producer}).fetchall()
    if any(r[4] is not None for r in rows):
        return None
    return [LinkedOutput(r[0], r[1], r[2], r[3]) for r in rows]


def link_outputs(
    conn: psycopg.Connection[Any], run_id: str, user: str, outputs: Sequence[OutputSpec], linked: Sequence[LinkedOutput]
) -> list[NewEvent]:
    """OutputLinked for each of another run's outputs, and this run's aliases onto them (an alias
    that already names that artifact is left alone: repeated cache hits add no alias events)."""
    batch = [
        NewEvent(
            f"run-{run_id}",
            OutputLinked(run_id=run_id, role=o.role, artifact_id=o.artifact_id, path=o.path, step=o.step),
        )
        for o in linked
    ]
    last_of_role = {o.role: o.artifact_id for o in linked}
    current = dict(
        conn.execute(QUERIES["aliases_of_user"], {"user": user, "aliases": [o.alias for o in outputs]}).fetchall()
    )
    for out in outputs:
        if out.role in last_of_role and current.get(out.alias) != last_of_role[out.role]:
            batch.append(
                NewEvent(
                    f"alias-{user}/{out.alias}",
                    AliasSet(user=user, alias=out.alias, artifact_id=last_of_role[out.role]),
                )
            )
    return batch


def alias_link(config: ClusterConfig, user: str, alias: str, kind: str, target: Path) -> None:
    """The alias's symlink under the kind's artifact root (none without a root; a failure is only logged)."""
    root = config.filesystem.artifact_roots.get(kind)
    if root:
        try:
            set_alias_link(Path(root), user, alias, target)
        except (OSError, ValueError) as exc:
            log.warning("alias link %s/%s not written: %s", user, alias, exc)


def write_linked_alias_links(
    config: ClusterConfig, user: str, outputs: Sequence[OutputSpec], linked: Sequence[LinkedOutput]
) -> None:
    """The alias symlinks of a run whose outputs are another run's artifacts (cache hit, coalesced follower).

    They point where the producer's own alias points: the object, or a checkpoint stream's directory.
    """
    targets = {o.role: Path(o.path).parent if o.step is not None else Path(o.path) for o in linked}
    for out in outputs:
        if out.role in targets:
            alias_link(config, user, out.alias, KIND_OF_OUTPUT.get(out.type, out.type), targets[out.role])
