"""The event base class, its registry, and how events become bytes and back.

Every event is a frozen msgspec Struct tagged by its class name, so the whole
set forms a tagged union. Unknown fields written by a newer labctl are
ignored on decode; an unknown event type decodes to ``UnknownEvent``.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, ClassVar

import msgspec

_REGISTRY: dict[str, type[Event]] = {}
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {}
_ENCODER = msgspec.json.Encoder()


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True, gc=False):
    """A fact that happened. Subclasses are registered under their class name."""

    stream_prefix: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    @property
    def type_name(self) -> str:
        return type(self).__name__


class UnknownEvent(msgspec.Struct, frozen=True):
    """An event whose type this labctl does not know (written by a newer one)."""

    type: str
    raw: bytes


class EventMeta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Who and what caused an event."""

    actor: str = ""
    host: str = ""
    labctl_version: str = ""
    causation_id: str | None = None
    correlation_id: str | None = None


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event as it stands in the log.

    ``data`` is decoded from ``raw`` on first use, so readers that only look at
    positions and types (a reactor skipping events it has no interest in, a
    filtered listing) never pay for decoding. Just-appended events carry the
    ``event`` they were made from.
    """

    position: int
    stream: str
    version: int
    type: str
    meta: EventMeta
    recorded_at: datetime
    raw: str | bytes = b""
    event: Event | UnknownEvent | None = None

    @property
    def data(self) -> Event | UnknownEvent:
        event = self.event
        if event is None:
            event = decode_event(self.type, self.raw)
            msgspec.structs.force_setattr(self, "event", event)  # decoded once, then kept
        return event


_META_DECODER = msgspec.json.Decoder(EventMeta)


def event_types() -> dict[str, type[Event]]:
    """All registered event types by name."""
    return dict(_REGISTRY)


def encode(obj: msgspec.Struct) -> bytes:
    return _ENCODER.encode(obj)


def decode_event(type_name: str, data: str | bytes) -> Event | UnknownEvent:
    decoder = _DECODERS.get(type_name)
    if decoder is None:
        cls = _REGISTRY.get(type_name)
        if cls is None:
            return UnknownEvent(type=type_name, raw=data.encode() if isinstance(data, str) else data)
        # Built on first use: a Struct is not complete inside __init_subclass__.
        decoder = _DECODERS[type_name] = msgspec.json.Decoder(cls)
    try:
        event: Event = decoder.decode(data)
    except msgspec.ValidationError:
        # Readers must get past anything already in the log: an event that no longer fits its
        # type is shown raw and skipped by projections, like one of an unknown type.
        return UnknownEvent(type=type_name, raw=data.encode() if isinstance(data, str) else data)
    return event


@functools.lru_cache(maxsize=4096)
def decode_meta(data: str | bytes) -> EventMeta:
    # Metadata repeats (same actor, host and version over many events) and EventMeta is frozen:
    # decode each distinct text once.
    meta: EventMeta = _META_DECODER.decode(data)
    return meta
