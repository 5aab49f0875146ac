"""The dashboard's pictures, drawn as SVG on the server: line plots and layered graphs (DAGs).

Every label goes through ``escape``; colours come from CSS classes (``st-<state>``,
``s0``..``s9``), so the pages' stylesheet decides how a state looks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

SERIES_CLASSES = 10


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    href: str | None = None


MAX_POINTS = 1500


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most ``MAX_POINTS`` of a long series (every k-th, and the last), enough for a 900 px plot."""
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering ``lo..hi``."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4g}"


def line_plot(
    series: Sequence[Series],
    *,
    x_label: str = "step",
    y_label: str = "",
    width: int = 640,
    height: int = 260,
    markers_only: bool = False,
) -> Markup:
    """Lines (one per series, points sorted by x) on shared axes, with a legend; empty -> a note."""
    drawn = [Series(s.label, _thin(sorted(s.points)), s.href) for s in series if s.points]
    if not drawn:
        return Markup('<p class="muted">nothing to plot yet</p>')
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_lo == y_hi:
        pad = abs(y_lo) * 0.1 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad
    left, right, top, bottom = 56, 12, 10, 34
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    out = [
        f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(y_label)} by {escape(x_label)}">'
    ]
    for t in _ticks(y_lo, y_hi):
        y = py(t)
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(x_lo, x_hi):
        x = px(t)
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<rect class="frame" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/>')
    out.append(
        f'<text class="axis" x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle">{escape(x_label)}</text>'
    )
    for i, s in enumerate(drawn):
        cls = f"s{i % SERIES_CLASSES}"
        pts = s.points
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        if len(pts) > 1 and not markers_only:
            out.append(f'<polyline class="line {cls}" points="{coords}"/>')
        for x, y in pts if len(pts) <= 200 else ():  # markers only where they can be told apart
            out.append(
                f'<circle class="dot {cls}" cx="{px(x):.1f}" cy="{py(y):.1f}" r="3">'
                f"<title>{escape(s.label)}: {escape(x_label)}={_fmt(x)} {escape(y_label)}={_fmt(y)}</title></circle>"
            )
    out.append("</svg>")
    legend = ['<ul class="legend">']
    for i, s in enumerate(drawn):
        label = escape(s.label)
        text = f'<a href="{escape(s.href)}">{label}</a>' if s.href else label
        legend.append(f'<li><span class="swatch s{i % SERIES_CLASSES}"></span>{text}</li>')
    legend.append("</ul>")
    return Markup("".join(out) + "".join(legend))


@dataclass
class Node:
    id: str
    label: str
    status: str = ""
    href: str | None = None
    parents: list[str] = field(default_factory=list)
    kind: str = "stage"  # css class of the box: stage, run, artifact, root
    detail: str = ""


MAX_GRAPH_NODES = 400
NODE_W, NODE_H, GAP_X, GAP_Y = 168, 40, 22, 46


def layers(nodes: Sequence[Node]) -> list[list[Node]]:
    """Nodes by depth (longest path from a root), each layer in the given order; cycles are cut."""
    by_id = {n.id: n for n in nodes}
    depth: dict[str, int] = {}
    visiting: set[str] = set()

    def depth_of(node_id: str) -> int:
        if node_id in depth:
            return depth[node_id]
        visiting.add(node_id)
        parents = [p for p in by_id[node_id].parents if p in by_id and p not in visiting]
        value = 1 + max((depth_of(p) for p in parents), default=-1)
        visiting.discard(node_id)
        depth[node_id] = value
        return value

    rows: dict[int, list[Node]] = {}
    for n in nodes:
        rows.setdefault(depth_of(n.id), []).append(n)
    return [rows[d] for d in sorted(rows)]


def dag(nodes: Sequence[Node]) -> Markup:
    """Boxes in layers (roots on top), an arrow from each parent to its child, each box coloured by state."""
    if not nodes:
        return Markup('<p class="muted">no stages</p>')
    if len(nodes) > MAX_GRAPH_NODES:
        return Markup(f'<p class="muted">{len(nodes)} nodes: too many to draw; see the table</p>')
    rows = layers(nodes)
    widest = max(len(r) for r in rows)
    width = widest * (NODE_W + GAP_X) + GAP_X + NODE_W / 2  # room on the right for edges that skip a layer
    height = len(rows) * (NODE_H + GAP_Y) + GAP_Y - 10
    where: dict[str, tuple[float, float]] = {}
    for d, row in enumerate(rows):
        offset = (width - len(row) * (NODE_W + GAP_X) + GAP_X) / 2
        for i, n in enumerate(row):
            where[n.id] = (offset + i * (NODE_W + GAP_X), GAP_Y / 2 + d * (NODE_H + GAP_Y))
    out = [
        f'<svg class="dag" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
        'role="img" aria-label="graph">',
        '<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L8,4 L0,8 z" class="arrowhead"/></marker></defs>',
    ]
    for n in nodes:
        for p in n.parents:
            if p not in where:
                continue
            (x1, y1), (x2, y2) = where[p], where[n.id]
            sx, sy, ex, ey = x1 + NODE_W / 2, y1 + NODE_H, x2 + NODE_W / 2, y2
            mid = (sy + ey) / 2
            if ey - sy > NODE_H + GAP_Y and abs(sx - ex) < NODE_W:
                # Skips a layer: bow out to the right so the line does not run under the boxes between.
                bow = max(sx, ex) + NODE_W / 2 + GAP_X / 2
                start = f"M{sx + NODE_W / 2:.1f},{y1 + NODE_H / 2:.1f}"
                curve = f"{start} C{bow:.1f},{sy:.1f} {bow:.1f},{ey:.1f} {ex + 8:.1f},{ey - 2:.1f}"
            else:
                curve = f"M{sx:.1f},{sy:.1f} C{sx:.1f},{mid:.1f} {ex:.1f},{mid:.1f} {ex:.1f},{ey - 2:.1f}"
            out.append(f'<path class="edge" d="{curve}" marker-end="url(#arrow)"/>')
    for n in nodes:
        x, y = where[n.id]
        label = n.label if len(n.label) <= 22 else n.label[:21] + "…"
        detail = n.detail if len(n.detail) <= 26 else n.detail[:25] + "…"
        box = (
            f'<g class="node {escape(n.kind)} st-{escape(n.status)}" data-node="{escape(n.id)}" '
            f'data-status="{escape(n.status)}">'
            f"<title>{escape(n.label)} ({escape(n.status)})</title>"
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="5"/>'
            f'<text class="label" x="{x + 8:.1f}" y="{y + 16:.1f}">{escape(label)}</text>'
            f'<text class="detail" x="{x + 8:.1f}" y="{y + 31:.1f}">{escape(detail or n.status)}</text></g>'
        )
        out.append(f'<a href="{escape(n.href)}">{box}</a>' if n.href else box)
    out.append("</svg>")
    return Markup("".join(out))
