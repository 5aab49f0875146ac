"""Errors meant for people: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad input, unknown id): exit code 1 by default."""

    exit_code = 1


class InputError(UserError):
    """A malformed file or argument: exit code 2, nothing written."""

    exit_code = 2


class DatabaseUnavailable(UserError):
    """The database cannot be reached (after bounded retries)."""

    exit_code = 3
