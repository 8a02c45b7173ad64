"""The unit that travels from a source to a sink, with its acknowledgement.

The value is already serialized: the transform encodes once, the sink only
copies bytes. ``on_delivered`` is called exactly once by the delivery loop when
the broker acknowledged the record (or, for a dead-lettered one, when the DLQ
record was acknowledged). Retries never call it: a retried record is not done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Headers", "OutRecord"]

Headers = list[tuple[str, bytes]]


@dataclass(slots=True, eq=False)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    #: label for metrics: a bounded event type
    event_type: str
    #: loop time when the bridge received the input, for the latency histogram
    received_at: float
    on_delivered: Callable[[OutRecord], None] | None = None
    #: set when a record goes to the DLQ; the metric reason label
    dead_letter_reason: str | None = None
    attempts: int = field(default=0)
