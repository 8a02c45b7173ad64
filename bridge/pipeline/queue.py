"""The bounded queue between sources and the Kafka sink, bounded twice: by
records and by bytes. A record count alone is a poor memory bound when an
envelope can be 200 bytes (a chunk) or 20 KB (a full task snapshot): measured
at 10,000 streams, the count-bounded queue held ~40 MB of envelopes.

It is an ``asyncio.Queue`` extended the documented way (``_put``/``_get``,
as ``PriorityQueue`` does), so ``put`` waits, FIFO, while either bound is
reached: the back-pressure that stops streams from reading.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

from bridge.core.record import OutRecord

__all__ = ["RecordQueue"]


class RecordQueue(asyncio.Queue[OutRecord]):
    def __init__(self, max_records: int, max_bytes: int) -> None:
        super().__init__(max_records)
        self._max_bytes = max_bytes
        self._bytes = 0

    @property
    def bytes(self) -> int:
        """Bytes of record values waiting."""
        return self._bytes

    def oldest_received_at(self) -> float | None:
        """When the record first in line came in (loop time); ``None`` when empty."""
        # ``_queue``: the deque asyncio.Queue keeps its items in (what ``_put``
        # and ``_get`` extend; typeshed does not declare it)
        items = cast("deque[OutRecord]", cast("Any", self)._queue)
        return items[0].received_at if items else None

    def full(self) -> bool:
        # One record always fits an empty queue, however large.
        return super().full() or (self._bytes >= self._max_bytes and not self.empty())

    def _put(self, item: OutRecord) -> None:
        super()._put(item)
        self._bytes += len(item.value or b"")

    def _get(self) -> OutRecord:
        item: OutRecord = super()._get()
        self._bytes -= len(item.value or b"")
        return item
