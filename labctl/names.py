"""The one rule for names that become path components (users, aliases), and path containment.

A user name or an output alias ends up as one directory level under a root
(``<output root>/<user>/<alias>``, ``<artifact root>/aliases/<user>/<alias>``,
``<runs base>/<user>/...``); a name that is ``..``, contains ``/`` or starts
with ``.`` would climb out of it or hide in it. Every such name passes
``check_name`` before it is used, and every path built from one passes
``inside`` before anything is moved, linked or deleted there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from labctl.realpath import realpath

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
NAME_RULE = "letters, digits, '.', '_' or '-', not starting with '.' or '-', at most 255 characters"
#: directory names labctl itself uses beside the users' directories
RESERVED = frozenset({"runs", "aliases", "_objects", "_store"})


class BadName(ValueError):
    """A user name or alias that breaks the name rule."""


class OutsideRoot(ValueError):
    """A path that resolves outside the root it must stay in."""


def check_name(what: str, name: str) -> str:
    """``name`` if it is one safe path component; raises BadName saying why not."""
    if not NAME.match(name):
        raise BadName(f"{what} {name!r} is not allowed: use {NAME_RULE}")
    if what == "user name" and name in RESERVED:
        raise BadName(f"{what} {name!r} is reserved")
    return name


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """``path`` if its directory resolves (links followed) inside ``root``; raises OutsideRoot otherwise.

    The last component is not followed: a link there is the thing acted on (replaced or
    unlinked), and callers that move a directory refuse a link. The root itself does not
    count as inside: nothing may move, link or delete a whole root.
    """
    path = Path(path)
    real_root = realpath(root)
    real = os.path.join(realpath(path.parent), path.name)
    # realpath answers are normalized, so "below the root" is a string prefix ending at a separator
    below = real.startswith(real_root if real_root.endswith("/") else real_root + "/")
    if path.name in ("", ".", "..") or real == real_root or not below:
        raise OutsideRoot(f"{path} is outside {root}; refusing to touch it")
    return path
