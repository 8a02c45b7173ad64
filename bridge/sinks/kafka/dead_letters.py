"""The dead-letter sink of the Kafka-to-platform direction: a message the
platform refuses, or that fails validation, goes to the DLQ with its original
bytes and headers, and why and where it came from. ``write`` returns once
Kafka acknowledged the record, so the source may then commit past it."""

from __future__ import annotations

import asyncio
import logging

from bridge.core.dead_letter import dead_letter
from bridge.core.message import InMessage
from bridge.core.record import Publish, publish_acked
from bridge.observability.metrics import DeadLetterReason

__all__ = ["DeadLetterSink"]

log = logging.getLogger(__name__)


class DeadLetterSink:
    def __init__(self, topic: str, publish: Publish) -> None:
        self._topic = topic
        self._publish = publish

    async def write(
        self,
        message: InMessage,
        reason: DeadLetterReason,
        error: str,
        status: int | None,
    ) -> None:
        log.warning(
            "message dead-lettered",
            extra={
                "reason": reason,
                "error": error,
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
            },
        )
        record = dead_letter(
            topic=self._topic,
            value=message.value or b"",
            key=message.key,
            reason=reason,
            error=error,
            source="kafka",
            received_at=asyncio.get_running_loop().time(),
            attributes={
                "original_topic": message.topic,
                "original_partition": message.partition,
                "original_offset": message.offset,
                "status": status,
            },
            original_headers=list(message.headers),
        )
        await publish_acked(self._publish, [record])
