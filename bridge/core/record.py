"""The unit that travels from a source to a sink, with its acknowledgement.

The value is already serialized: the transform encodes once, the sink only
copies bytes. Two callbacks, each called exactly once by the delivery loop:

- ``on_written``: the broker has the record, possibly inside a transaction not
  yet committed. A task's acknowledged position moves here, so the checkpoint
  that covers the record can ride in the same transaction.
- ``on_delivered``: the record is durable and visible to read_committed
  consumers (its transaction committed; without transactions, the same moment
  as ``on_written``). Whatever depends on the record being safe (an input
  offset committed after it, a caller waiting) hangs here.

Retries never call them: a retried record is not done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from bridge.observability.metrics import DeadLetterReason

__all__ = [
    "CURRENT_INPUT",
    "Headers",
    "InputProgress",
    "OutRecord",
    "Publish",
    "acknowledge",
    "completion",
    "mark_written",
    "publish_acked",
]

Headers = list[tuple[str, bytes]]


@dataclass(slots=True, eq=False)
class OutRecord:
    topic: str
    key: bytes | None
    #: ``None`` is a tombstone (compacted topics delete the key)
    value: bytes | None
    headers: Headers
    #: label for metrics: a bounded event type
    event_type: str
    #: loop time when the bridge received the input, for the latency histogram
    received_at: float
    on_delivered: Callable[[OutRecord], None] | None = None
    #: set when a record goes to the DLQ; the metric reason label
    dead_letter_reason: DeadLetterReason | None = None
    attempts: int = field(default=0)
    #: an explicit partition (co-partitioned coordination topics); else by key
    partition: int | None = None
    on_written: Callable[[OutRecord], None] | None = None
    #: the next record in the queue belongs to the same unit (one envelope's
    #: records): a transaction never ends between them
    joined: bool = False
    #: ``on_written`` has run (a transaction redone after an abort must not rerun it)
    written: bool = False


def mark_written(record: OutRecord) -> None:
    """The broker has the record: run ``on_written``, once whatever happens next."""
    if not record.written:
        record.written = True
        if record.on_written is not None:
            record.on_written(record)


def acknowledge(record: OutRecord) -> None:
    """The record is durable: ``on_written`` (if it has not run) then
    ``on_delivered``, the order the delivery loops keep."""
    mark_written(record)
    if record.on_delivered is not None:
        record.on_delivered(record)


def completion(records: list[OutRecord]) -> asyncio.Future[None]:
    """A future that resolves when every one of ``records`` was delivered; the
    records' own ``on_delivered`` callbacks still run first."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    remaining = len(records)
    if remaining == 0:
        future.set_result(None)
        return future

    def wrap(original: Callable[[OutRecord], None] | None) -> Callable[[OutRecord], None]:
        def delivered(record: OutRecord) -> None:
            nonlocal remaining
            if original is not None:
                original(record)
            remaining -= 1
            if remaining == 0 and not future.done():
                future.set_result(None)

        return delivered

    for record in records:
        record.on_delivered = wrap(record.on_delivered)
    return future


class InputProgress(Protocol):
    """The consumed message whose handler is running (``CURRENT_INPUT``)."""

    def output(self, records: list[OutRecord]) -> None:
        """The handler publishes these records: the message is written once they are."""
        ...


#: Set by a Kafka source around each handler call; the queue's entry reads it,
#: so a message's offset can be committed in the transaction of its output.
CURRENT_INPUT: ContextVar[InputProgress | None] = ContextVar("current_input", default=None)


#: How sources hand records to the bounded queue (waits while it is full).
Publish = Callable[[list[OutRecord]], Awaitable[None]]


async def publish_acked(publish: Publish, records: list[OutRecord]) -> None:
    """Hand ``records`` to the queue and return once Kafka acknowledged them all
    (a source that commits an input offset after this knows its output is safe)."""
    done = completion(records)
    await publish(records)
    await done
