"""Errors raised by executors when the thing that runs jobs refuses or fails."""

from __future__ import annotations

from labctl.errors import UserError


class ExecutorError(UserError):
    """A scheduler command failed; the message carries its own words (e.g. sbatch's stderr)."""
