"""JSON for people and the web page that never fails on what is already in the log.

orjson is fast but refuses integers wider than 64 bits; a log written before
such values were refused may hold them, and ``show``/``events --json``/the
API must still answer. Those rare values take the slow standard-library path.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any, *, indent: bool = False) -> bytes:
    """``value`` as JSON bytes; anything JSON has no type for becomes its ``str()``."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2 if indent else None)
    except TypeError:
        return json.dumps(value, default=str, indent=2 if indent else None, ensure_ascii=False).encode()
