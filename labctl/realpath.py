"""``os.path.realpath`` answered by the kernel where it can be.

Python's ``realpath`` walks the path itself: an ``lstat`` and some string work per component, about
30 µs for a path ten directories deep. The agent resolves several such paths for every job (each alias
link is checked to stay inside its artifact root, and its target is made relative), and a pipeline's
recording for every stage. Opening the path with ``O_PATH`` (no permission beyond what the walk needs,
no blocking on a FIFO) and reading back ``/proc/self/fd/N`` gives the same answer in three system calls.
Whenever that cannot answer (no ``/proc``, a missing component, a loop, a path removed meanwhile), the
answer is ``os.path.realpath``'s own.
"""

from __future__ import annotations

import os
from pathlib import Path

_O_PATH = getattr(os, "O_PATH", 0)
_PROC_FD = "/proc/self/fd/"
_FAST = bool(_O_PATH) and os.path.isdir(_PROC_FD)


def realpath(path: str | os.PathLike[str]) -> str:
    """The canonical absolute path, symlinks resolved: ``os.path.realpath(path)``."""
    return _by_kernel(path) or os.path.realpath(path)


def resolved(path: str | os.PathLike[str]) -> str:
    """``str(Path(path).resolve())``: when the kernel answers, the path exists (no link loop to report)."""
    return _by_kernel(path) or str(Path(path).resolve())


def _by_kernel(path: str | os.PathLike[str]) -> str | None:
    """The kernel's canonical path, or None when it cannot tell (missing, a loop, no ``/proc``)."""
    if not _FAST:
        return None
    try:
        fd = os.open(path, _O_PATH | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None  # missing, a loop, a NUL byte...: realpath says what it makes of it
    try:
        found = os.readlink(f"{_PROC_FD}{fd}")
    except OSError:
        return None
    finally:
        os.close(fd)
    return found if found.startswith("/") and not found.endswith(" (deleted)") else None
