"""The event log: event types, and the store that appends, reads and follows them."""

from events import types
from events.codec import Event, EventMeta, StoredEvent, UnknownEvent, event_types
from events.errors import ConcurrencyError, EventStoreError, ImmutableLogError
from events.store import (
    CHANNEL,
    NewEvent,
    append,
    append_batch,
    event_count,
    first_broken_link,
    last_position,
    position_at,
    read_all,
    read_stream,
    stream_version,
    streams_matching,
)

__all__ = [
    "CHANNEL",
    "ConcurrencyError",
    "Event",
    "EventMeta",
    "EventStoreError",
    "ImmutableLogError",
    "NewEvent",
    "StoredEvent",
    "UnknownEvent",
    "append",
    "append_batch",
    "event_count",
    "event_types",
    "first_broken_link",
    "last_position",
    "position_at",
    "read_all",
    "read_stream",
    "stream_version",
    "streams_matching",
    "types",
]
