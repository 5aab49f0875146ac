"""Values the event log can hold and every reader can read back.

A recipe's values go into an immutable event, so one that a reader cannot
decode (an integer wider than 64 bits, NaN, a NUL character) or that costs
every reader memory and time (megabytes, thousands of nesting levels) would
break ``events``, ``show`` and the web page for good. They are refused at the
edge instead, with the field that holds them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from labctl.files.decode import Part

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 32
MAX_STRING = 64 * 1024
MAX_TOTAL = 1024 * 1024


def value_problems(value: Any, where: list[Part]) -> Iterator[tuple[list[Part], str]]:
    """Every ``(field, why)`` in ``value`` that the log must not take; nothing when it is fine."""
    total = 0
    stack: list[tuple[Any, list[Part]]] = [(value, where)]
    while stack:
        item, at = stack.pop()
        if len(at) - len(where) > MAX_DEPTH:
            yield at, f"nested more than {MAX_DEPTH} levels deep"
            continue
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                yield at, f"{item} does not fit in 64 bits; write it as a string or a float"
        elif isinstance(item, float):
            if not math.isfinite(item):
                yield at, f"{item} is not a finite number"
        elif isinstance(item, str):
            total += len(item)
            yield from _string_problems(item, at)
        elif isinstance(item, dict):
            for key, inner in item.items():
                key_at = [*at, str(key)]
                total += len(str(key))
                yield from _string_problems(str(key), key_at)
                stack.append((inner, key_at))
        elif isinstance(item, list | tuple):
            stack.extend((inner, [*at, i]) for i, inner in enumerate(item))
        if total > MAX_TOTAL:
            yield where, f"more than {MAX_TOTAL // 1024} KiB of text; keep data in files and pass their paths"
            return


def _string_problems(text: str, at: list[Part]) -> Iterator[tuple[list[Part], str]]:
    if "\x00" in text:
        yield at, "contains a NUL character"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # e.g. undecodable bytes from the command line
            yield at, "is not valid UTF-8"
    if len(text) > MAX_STRING:
        yield at, f"is {len(text):,} characters long (at most {MAX_STRING // 1024} KiB)"
