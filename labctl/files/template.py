"""Template tokens: ``{run.id}``, ``{params.lr}``, ``{inputs.data.path}``...

Only ``{word(.word)*}`` is a token, so inline JSON (``{"a": 1}``), ``{}`` and
shell ``${VAR}`` pass through untouched. A token without a value is an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

# `${x}` is shell expansion inside `bash -c` commands, never ours.
TOKEN = re.compile(r"(?<!\$)\{([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\}")


class UnresolvedTokens(ValueError):
    """Tokens in a template that have no value."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        listed = ", ".join("{" + t + "}" for t in tokens)
        super().__init__(f"unresolved template token(s): {listed}")


def tokens_in(text: str) -> list[str]:
    """The tokens in ``text``, without braces, in order of appearance, once each."""
    return list(dict.fromkeys(TOKEN.findall(text)))


def render(text: str, values: Mapping[str, str]) -> str:
    """Replace every token by ``values[token]``.

    Raises UnresolvedTokens listing every token that has no value.
    """
    if "{" not in text:
        return text  # no token (most words of a command): no regex pass
    missing = [t for t in tokens_in(text) if t not in values]
    if missing:
        raise UnresolvedTokens(missing)
    return TOKEN.sub(lambda m: values[m.group(1)], text)


def scalar_text(value: Any) -> str:
    """How a params/args value reads inside a command: TOML spelling, JSON for tables and arrays."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested tables addressable by dotted tokens.

    ``flatten("params", {"optim": {"lr": 1}})`` ->
    ``{"params": ..., "params.optim": '{"lr": 1}', "params.optim.lr": "1"}``.
    """
    out = {prefix: scalar_text(value)}
    if isinstance(value, Mapping):
        for key, inner in value.items():
            out.update(flatten(f"{prefix}.{key}", inner))
    return out
