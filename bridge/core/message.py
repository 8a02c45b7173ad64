"""A message read from Kafka, as the bridge's components see it: plain fields,
none of the client library's types (the source makes it, handlers and the
dead-letter sink read it)."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.core.record import Headers

__all__ = ["InMessage"]


@dataclass(frozen=True, slots=True)
class InMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    #: milliseconds since the epoch (the record's timestamp), 0 when unknown
    timestamp: int = 0
