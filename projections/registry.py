"""Every read model labctl maintains, in the order their handlers run."""

from __future__ import annotations

from projections import artifacts, evals, imports, metrics, pipelines, runs
from projections.base import Projection

PROJECTIONS: list[Projection] = [
    runs.projection,
    artifacts.projection,
    pipelines.projection,
    evals.projection,
    metrics.projection,
    imports.projection,
]
