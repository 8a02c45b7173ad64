"""A ``publish`` (the queue's entry, as every source and sink sees it) that
collects what it is handed and acknowledges it as Kafka would: at once, or,
with ``hold``, only when the test calls ``ack()``."""

from __future__ import annotations

from bridge.core.record import OutRecord, mark_written

__all__ = ["RecordingPublish"]


class RecordingPublish:
    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.records: list[OutRecord] = []

    async def __call__(self, records: list[OutRecord]) -> None:
        self.records.extend(records)
        if not self.hold:
            self.ack()

    def ack(self) -> None:
        """Acknowledge everything handed over so far, each record once."""
        for record in self.records:
            mark_written(record)  # once: it remembers
            callback, record.on_delivered = record.on_delivered, None
            if callback is not None:
                callback(record)

    def on(self, topic: str) -> list[OutRecord]:
        """What was handed over for ``topic``."""
        return [record for record in self.records if record.topic == topic]
