"""Eval results as a table: sorted by the swept parameter, params and metrics in columns of their own.

An eval's result is one JSON object; keys that describe the run rather than
measure it (the training run's params and args, and ``lr``, ``seed``,
``epoch``, ``step``, ``examples``...) go to parameter columns, numbers that
remain are metrics. Text values (e.g. ``split``) are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from events.queries import load_queries
from labctl.metrics import format_value

QUERIES = load_queries("labctl", "evals.sql")

#: result keys that are settings of the run, not measurements
PARAM_LIKE = frozenset({"lr", "learning_rate", "seed", "epoch", "step", "examples", "batch_size", "lr_index"})


def split_result(
    result: Mapping[str, Any] | None, recipe: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, float]]:
    """(params, metrics) of one eval result."""
    params: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    settings = set(PARAM_LIKE)
    if recipe:
        settings |= set(recipe.get("params", {})) | set(recipe.get("args", {}))
    for key, value in (result or {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if key in settings:
            params[key] = value
        else:
            metrics[key] = float(value)
    return params, metrics


def eval_table(
    conn: psycopg.Connection[Any], *, policy: str | None = None, producer: str | None = None
) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows: POLICY, TRAIN RUN, the swept arg, STEP, param columns, metric columns, EVAL RUN, STATE."""
    found = conn.execute(QUERIES["eval_table"], {"policy": policy, "producer": producer}).fetchall()
    split = [split_result(m, recipe) for *_, m, recipe in found]
    param_keys = sorted({k for p, _ in split for k in p} - {"step"})
    metric_keys = sorted({k for _, m in split for k in m})
    swept = sorted({arg for _, _, arg, *_ in found if arg})
    headers = ["POLICY", "TRAIN RUN", *(a.upper() for a in swept), "STEP", *param_keys, *metric_keys]
    headers += ["EVAL RUN", "STATE"]
    rows = []
    for (pol, train, arg, index, step, eval_run, state, _m, _r), (params, metrics) in zip(found, split, strict=True):
        row: list[Any] = [pol, train, *(index if a == arg else "" for a in swept), step]
        row += [format_value(params[k]) if k in params else "" for k in param_keys]
        row += [format_value(metrics[k]) if k in metrics else "" for k in metric_keys]
        rows.append([*row, eval_run, state])
    return headers, rows
