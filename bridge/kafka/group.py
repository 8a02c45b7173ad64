"""Consumer groups, once for every group the bridge runs (report consumers,
task owners): joining with retries owned here, not by each component, and
the one rebalance listener that turns aiokafka's callbacks into ours."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError

from bridge.config import KafkaConfig
from bridge.kafka.options import KAFKA_RETRY, client_options

__all__ = ["PartitionsCallback", "RebalanceListener", "group_options", "join_group"]

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[list[TopicPartition]], Awaitable[None]]


def group_options(
    kafka: KafkaConfig,
    *,
    group_id: str,
    session_timeout_ms: int,
    heartbeat_interval_ms: int,
    client_id: str | None = None,
) -> dict[str, Any]:
    """A group member's options. Auto-commit is never on: the bridge commits
    an offset only once what the message led to was acknowledged."""
    options = client_options(kafka)
    if client_id is not None:
        options["client_id"] = client_id
    options.update(
        group_id=group_id,
        enable_auto_commit=False,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
    )
    return options


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards revocations and assignments; aiokafka awaits both, so the group
    waits while a revoke stops work and writes what must be written."""

    def __init__(self, *, on_revoked: PartitionsCallback, on_assigned: PartitionsCallback) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._on_assigned(list(assigned))


async def join_group(
    make: Callable[[], AIOKafkaConsumer],
    what: str,
    *,
    on_unreachable: Callable[[], None] | None = None,
) -> AIOKafkaConsumer:
    """Start a freshly made (and subscribed) consumer, retrying with back-off
    while Kafka is unreachable. A consumer is never leaked: one that fails or
    is cancelled while joining (a shutdown) is stopped."""
    backoff = KAFKA_RETRY.backoff()
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
