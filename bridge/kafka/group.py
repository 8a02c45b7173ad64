"""Joining a consumer group, once for every group the bridge runs (report
consumers, task owners): the runner owns the retry, not each component."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError

from bridge.pipeline.backoff import Backoff

__all__ = ["join_group"]

log = logging.getLogger(__name__)


async def join_group(
    make: Callable[[], AIOKafkaConsumer],
    what: str,
    *,
    on_unreachable: Callable[[], None] | None = None,
) -> AIOKafkaConsumer:
    """Start a freshly made (and subscribed) consumer, retrying with back-off
    while Kafka is unreachable. A consumer is never leaked: one that fails or
    is cancelled while joining (a shutdown) is stopped."""
    backoff = Backoff(0.5, 15.0)
    while True:
        consumer = make()
        try:
            await consumer.start()
        except KafkaConnectionError as exc:
            await consumer.stop()
            if on_unreachable is not None:
                on_unreachable()
            delay = backoff.next_delay()
            log.warning(
                "consumer cannot reach Kafka; retrying",
                extra={"consumer": what, "error": str(exc), "retry_in_s": round(delay, 2)},
            )
            await asyncio.sleep(delay)
            continue
        except BaseException:
            await asyncio.shield(consumer.stop())
            raise
        return consumer
