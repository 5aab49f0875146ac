"""The one error a user sees for a bad file: which file, where, what was expected."""

from __future__ import annotations

from pathlib import Path


class FileFormatError(Exception):
    """A user's recipe, pipeline, policy or cluster file is wrong.

    ``str()`` is one line, ``<path>:<line>: <field>: <message>``; the line and
    the field are left out when unknown. The CLI prints it and exits 2.
    """

    def __init__(
        self,
        path: str | Path,
        field: str,
        message: str,
        *,
        line: int | None = None,
    ) -> None:
        self.path = str(path)
        self.field = field
        self.message = message
        self.line = line
        super().__init__(self.path, field, message, line)

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"
