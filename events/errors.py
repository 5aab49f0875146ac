"""Errors raised by the event store, each readable as one line."""

from __future__ import annotations


class EventStoreError(Exception):
    """Base class for event store failures a user may see."""


class ConcurrencyError(EventStoreError):
    """Someone else appended to the stream first (optimistic concurrency)."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        super().__init__(f"stream {stream} was expected at version {expected} but is at version {actual}")


class ImmutableLogError(EventStoreError):
    """An UPDATE, DELETE or TRUNCATE on the event log was refused."""


class ActorRefused(EventStoreError):
    """A person's own database role tried to record events as someone else."""
