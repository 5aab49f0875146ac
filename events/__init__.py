"""The event log: event types, and the store that appends, reads and follows them."""

from events import types, verify
from events.codec import Event, EventMeta, StoredEvent, UnknownEvent, event_types
from events.errors import ActorRefused, ConcurrencyError, EventStoreError, ImmutableLogError
from events.store import (
    CHANNEL,
    EncodedBatch,
    NewEvent,
    append,
    append_batch,
    decode_rows,
    event_count,
    last_position,
    position_at,
    read_all,
    read_stream,
    read_streams,
    stream_version,
    streams_matching,
)

__all__ = [
    "CHANNEL",
    "ActorRefused",
    "ConcurrencyError",
    "EncodedBatch",
    "Event",
    "EventMeta",
    "EventStoreError",
    "ImmutableLogError",
    "NewEvent",
    "StoredEvent",
    "UnknownEvent",
    "append",
    "append_batch",
    "decode_rows",
    "event_count",
    "event_types",
    "last_position",
    "position_at",
    "read_all",
    "read_stream",
    "read_streams",
    "stream_version",
    "streams_matching",
    "types",
    "verify",
]
