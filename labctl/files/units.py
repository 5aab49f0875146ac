"""Memory and wall-time values as users write them for SLURM, turned into numbers."""

from __future__ import annotations

import math
import re

_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.I)
_MEM_FACTOR_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
#: how sbatch spells "no time limit"
UNLIMITED = frozenset({"UNLIMITED", "INFINITE"})


def parse_mem_mb(value: str) -> int:
    """Megabytes (1024-based, as SLURM counts) in ``"32GB"``, ``"512MB"``, ``"4G"``, ``"2048"``.

    A bare number is megabytes, as in ``sbatch --mem``; ``"0"`` is SLURM's
    "all the memory of the node" and comes back as 0. Raises ValueError.
    """
    match = _MEM.match(value)
    if not match:
        raise ValueError(f'bad memory size {value!r}; expected a number with a unit, e.g. "32GB", "512MB", "4G"')
    amount = float(match.group(1)) * _MEM_FACTOR_MB[match.group(2).upper()]
    if amount < 0:
        raise ValueError(f"memory size {value!r} must not be negative")
    return math.ceil(amount)


def parse_time_seconds(value: str | int) -> int | None:
    """Seconds in a SLURM time limit; None for ``"UNLIMITED"``/``"INFINITE"`` (no limit).

    Accepts an int (minutes) and the strings ``"MM"``, ``"MM:SS"``,
    ``"HH:MM:SS"``, ``"D-HH"``, ``"D-HH:MM"``, ``"D-HH:MM:SS"``. Raises ValueError.
    """
    if isinstance(value, bool):
        raise ValueError(f"bad time limit {value!r}")
    if isinstance(value, str) and value.strip().upper() in UNLIMITED:
        return None
    seconds = value * 60 if isinstance(value, int) else _parse_time_string(value)
    if seconds <= 0:
        raise ValueError(f"time limit {value!r} must be more than zero")
    return seconds


def _parse_time_string(value: str) -> int:
    expected = f'bad time limit {value!r}; expected "HH:MM:SS", "MM:SS", "D-HH:MM:SS" or a number of minutes'
    match = _TIME.match(value.strip())
    if not match:
        raise ValueError(expected)
    days, first, second, third = match.groups()
    if days is not None:
        # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, secs = int(first), int(second or 0), int(third or 0)
        if hours >= 24:
            raise ValueError(expected)
    elif third is not None:
        hours, minutes, secs = int(first), int(second), int(third)
    elif second is not None:
        hours, minutes, secs = 0, int(first), int(second)
    else:
        hours, minutes, secs = 0, int(first), 0
    if (second is not None and minutes >= 60 and (days or third)) or secs >= 60:
        raise ValueError(expected)
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + secs
