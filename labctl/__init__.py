"""labctl: run and track ML experiments with an append-only event log in Postgres.

``labctl.log(step=…, name=value…)`` logs metrics from a job; importing labctl loads
nothing else (no CLI, no database driver), and ``log`` itself only on first use, so
``labctl --version`` and every command pay nothing for it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing alone costs milliseconds at every start
if TYPE_CHECKING:
    from typing import Any

    from labctl.metrics_file import log

__version__ = "0.1.0"

__all__ = ["__version__", "log"]


def __getattr__(name: str) -> Any:
    if name == "log":
        from labctl.metrics_file import log

        return log
    raise AttributeError(f"module 'labctl' has no attribute {name!r}")
