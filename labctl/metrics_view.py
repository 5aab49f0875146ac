"""Showing metrics: which runs a reference means, tables by step, terminal plots and SVG charts."""

from __future__ import annotations

import html
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from labctl.errors import InputError, UserError
from labctl.metrics import QUERIES, Series, format_value
from labctl.table import format_table

PLOT_SUFFIXES = (".svg",)


def expand_refs(conn: psycopg.Connection[Any], refs: Sequence[str]) -> list[str]:
    """Run ids for run, sweep or pipeline references (a sweep or pipeline means all its runs), in order."""
    from labctl.lookup import resolve_id

    out: list[str] = []
    for ref in refs:
        if ref.startswith("sweep_"):
            sweep_id = resolve_id(conn, "sweeps", "sweep", ref)
            rows = conn.execute(QUERIES["runs_of_sweep"], {"id": sweep_id}).fetchall()
        elif ref.startswith("pipeline_"):
            pipeline_id = resolve_id(conn, "pipelines", "pipeline", ref)
            rows = conn.execute(QUERIES["runs_of_pipeline"], {"id": pipeline_id}).fetchall()
        else:
            rows = [(resolve_id(conn, "runs", "run", ref),)]
        out += [r[0] for r in rows if r[0] not in out]
    return out


def metric_sources(conn: psycopg.Connection[Any], run_ids: Sequence[str]) -> dict[str, str]:
    """run id -> the run whose metrics it has: a cache hit or a coalesced run shows its producer's."""
    rows = conn.execute(QUERIES["metric_sources"], {"run_ids": list(run_ids)}).fetchall()
    found = dict(rows)
    return {r: found.get(r, r) for r in run_ids}


def run_labels(conn: psycopg.Connection[Any], run_ids: Sequence[str], *, short: bool = False) -> dict[str, str]:
    """A name per run: ``<run id> <swept arg>=<index>`` for sweep points, else the run id.

    ``short`` (plot legends): points of one sweep are named by ``<arg>=<index>`` alone.
    """
    rows = conn.execute(QUERIES["sweep_points_of"], {"run_ids": list(run_ids)}).fetchall()
    one_sweep = len(rows) == len(run_ids) and len({r[1] for r in rows}) == 1 and rows[0][1] is not None
    labels = {r: r for r in run_ids}
    for run_id, _sweep, arg, index in rows:
        if arg is not None and index is not None:
            labels[run_id] = f"{arg}={index}" if short and one_sweep else f"{run_id} {arg}={index}"
    return labels


def metrics_table(series: Sequence[Series], labels: dict[str, str]) -> str:
    """One metric of many runs: a column per run; otherwise a row per (run, step) and a column per metric."""
    runs = list(dict.fromkeys(s.run_id for s in series))
    names = list(dict.fromkeys(s.name for s in series))
    if len(names) == 1 and len(runs) > 1:
        by_run = {s.run_id: dict(zip(s.steps, s.values, strict=True)) for s in series}
        steps = sorted({st for s in series for st in s.steps})
        rows = [[st, *(_cell(by_run[r], st) for r in runs)] for st in steps]
        return f"{names[0]} by step\n" + format_table(["STEP", *(labels.get(r, r) for r in runs)], rows)
    table: list[list[Any]] = []
    for run_id in runs:
        mine = {s.name: dict(zip(s.steps, s.values, strict=True)) for s in series if s.run_id == run_id}
        steps = sorted({st for values in mine.values() for st in values})
        for st in steps:
            row = [labels.get(run_id, run_id)] if len(runs) > 1 else []
            table.append([*row, st, *(_cell(mine.get(n, {}), st) for n in names)])
    headers = (["RUN"] if len(runs) > 1 else []) + ["STEP", *names]
    return format_table(headers, table)


def _cell(values: dict[int, float | None], step: int) -> str:
    return format_value(values[step]) if step in values else ""


def _curves(series: Sequence[Series], labels: dict[str, str]) -> list[tuple[str, list[int], list[float]]]:
    """(label, steps, values) per series, without NaN and infinite points (they cannot be drawn)."""
    one_metric = len({s.name for s in series}) == 1
    curves = []
    for s in series:
        points = [(st, v) for st, v in zip(s.steps, s.values, strict=True) if v is not None and math.isfinite(v)]
        if points:
            label = labels.get(s.run_id, s.run_id) if one_metric else f"{labels.get(s.run_id, s.run_id)} {s.name}"
            curves.append((label, [p[0] for p in points], [p[1] for p in points]))
    return curves


def terminal_plot(series: Sequence[Series], labels: dict[str, str], *, width: int | None = None) -> str:
    """The curves drawn with plotext, sized to the terminal (colours only on a terminal)."""
    import plotext as plt

    curves = _curves(series, labels)
    if not curves:
        raise UserError("nothing to plot: no finite metric values")
    plt.clear_figure()
    columns = width or min(shutil.get_terminal_size((100, 24)).columns, 120)
    plt.plotsize(columns, max(15, min(30, 10 + 2 * len(curves))))
    plt.theme("clear")
    for label, steps, values in curves:
        plt.plot(steps, values, label=label, marker="braille")
    names = sorted({s.name for s in series})
    plt.title(", ".join(names) + " by step")
    plt.xlabel("step")
    text = str(plt.build())
    plt.clear_figure()
    text = text if sys.stdout.isatty() else str(plt.uncolorize(text))
    return text.rstrip("\n")


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def svg_plot(series: Sequence[Series], labels: dict[str, str], *, width: int = 800, height: int = 450) -> str:
    """A line chart as a standalone SVG document (axes, ticks, legend), drawn without any plotting library."""
    curves = _curves(series, labels)
    if not curves:
        raise UserError("nothing to plot: no finite metric values")
    xs = [x for _, steps, _ in curves for x in steps]
    ys = [y for _, _, values in curves for y in values]
    x0, x1 = _padded(min(xs), max(xs))
    y0, y1 = _padded(min(ys), max(ys))
    left, right, top, bottom = 70, 20, 40, 60 + 18 * len(curves)
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    title = html.escape(", ".join(sorted({s.name for s in series})) + " by step")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>',
    ]
    for t in _ticks(x0, x1):
        out.append(
            f'<line x1="{px(t):.1f}" y1="{top + plot_h}" x2="{px(t):.1f}" y2="{top + plot_h + 5}" stroke="#444"/>'
        )
        out.append(f'<text x="{px(t):.1f}" y="{top + plot_h + 18}" text-anchor="middle">{_tick_label(t)}</text>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + plot_w}" y2="{py(t):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_tick_label(t)}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 36}" text-anchor="middle">step</text>')
    for i, (label, steps, values) in enumerate(curves):
        color = _PALETTE[i % len(_PALETTE)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(steps, values, strict=True))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        if len(steps) <= 60:
            out += [
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>'
                for x, y in zip(steps, values, strict=True)
            ]
        ly = top + plot_h + 50 + 18 * i
        out.append(
            f'<line x1="{left}" y1="{ly - 4}" x2="{left + 24}" y2="{ly - 4}" stroke="{color}" stroke-width="3"/>'
        )
        out.append(f'<text x="{left + 30}" y="{ly}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _padded(lo: float, hi: float) -> tuple[float, float]:
    if hi == lo:
        return lo - 1, hi + 1
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _tick_label(value: float) -> str:
    return f"{value:.6g}" if abs(value) >= 1e-12 else "0"


def write_plot(series: Sequence[Series], labels: dict[str, str], target: str) -> Path:
    """Write the chart to ``target`` (.svg); other formats are refused before anything is written."""
    path = Path(target)
    if path.suffix.lower() == ".png":
        raise InputError(f"--plot {target}: PNG is not supported (it would need a plotting library); write .svg")
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(f"--plot {target}: expected a file ending in .svg (or --plot alone for the terminal)")
    document = svg_plot(series, labels)
    path.write_text(document)
    return path
