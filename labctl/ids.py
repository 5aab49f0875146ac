"""Typeable, sortable ids: ``run_``, ``pipeline_``, ``sweep_`` + time + randomness."""

from __future__ import annotations

import secrets
import time

# Crockford's base32, lower case: no i, l, o, u, so ids are easy to read and type.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _base32(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """``<prefix>_`` + 8 chars of milliseconds (sorts by time) + 6 random chars."""
    millis = int(time.time() * 1000)
    return f"{prefix}_{_base32(millis, 8)}{_base32(secrets.randbits(30), 6)}"


def new_run_id() -> str:
    return new_id("run")
