"""Lineage: the runs and artifacts upstream and downstream of a run or artifact, as trees."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from labctl.artifact_queries import QUERIES, find_artifacts, resolve_artifact, short_alias
from labctl.errors import UserError


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
    up_edges = conn.execute(QUERIES["lineage_upstream"], params).fetchall()
    down_edges = conn.execute(QUERIES["lineage_downstream"], params).fetchall()
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
    for rid, name, status, owner in conn.execute(QUERIES["lineage_runs"], {"ids": run_ids}):
        labels[("run", rid)] = f"{name} [{status}] {owner}"
    for art in find_artifacts(conn, ids=artifact_ids):
        shown = ", ".join(short_alias(x, user) for x in art.aliases)
        labels[("artifact", art.id)] = (
            f"{art.kind}{' ' + shown if shown else ''}{' (collected)' if art.removed_at else ''}"
        )
    for t, i in nodes:
        if t == "path":
            labels[(t, i)] = "external input"
    return labels


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
