"""labctl: run and track ML experiments with an append-only event log in Postgres.

``labctl.log(step=…, name=value…)`` logs metrics from a job; importing labctl loads
nothing else (no CLI, no database driver).
"""

from labctl.metrics_file import log

__version__ = "0.1.0"

__all__ = ["__version__", "log"]
