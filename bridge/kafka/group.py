"""Consumer groups, once for every group the bridge runs (report consumers,
task owners), on librdkafka through confluent-kafka's asyncio consumer.

Every group uses the cooperative protocol (KIP-429, ``cooperative-sticky``):
a rebalance revokes only the partitions that change owner, so the others keep
flowing. The callbacks are coroutines run on the event loop while librdkafka
waits for them: a revoke can stop work and write what must be written before
the group moves on. ``on_lost`` (the member was evicted: its session expired)
is a revoke that can no longer commit anything.

librdkafka connects, joins and rejoins by itself, retrying for ever; an
unreachable cluster surfaces as errors reported through ``on_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition
from confluent_kafka.aio import AIOConsumer

from bridge.config import KafkaConfig
from bridge.core.message import InMessage
from bridge.errors import FencedError
from bridge.kafka.calls import DaemonExecutor
from bridge.kafka.rdkafka import consumer_config

__all__ = ["GroupMember", "PartitionsCallback", "group_config", "in_message"]

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[list[TopicPartition]], Awaitable[None]]

#: errors that mean "Kafka is not reachable", for readiness
_UNREACHABLE = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})


def group_config(
    kafka: KafkaConfig,
    *,
    group_id: str,
    session_timeout_ms: int,
    heartbeat_interval_ms: int,
    client_id: str | None = None,
    rebalance_timeout_ms: int = 300_000,
    offset_reset: str = "earliest",
) -> dict[str, Any]:
    """A member's options. Auto-commit is never on: the bridge commits an
    offset only once what the message led to was acknowledged."""
    options = consumer_config(
        kafka, group_id=group_id, client_id=client_id, offset_reset=offset_reset
    )
    options.update(
        {
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": heartbeat_interval_ms,
            # librdkafka's rebalance timeout: how long a revoke may take (it
            # waits for acks and writes checkpoints) before the member is dropped
            "max.poll.interval.ms": rebalance_timeout_ms,
        }
    )
    return options


def in_message(message: Message) -> InMessage:
    timestamp = message.timestamp()
    return InMessage(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=message.key(),
        value=message.value(),
        headers=_headers(message),
        timestamp=timestamp[1] if timestamp[0] else 0,
    )


def _headers(message: Message) -> list[tuple[str, bytes]]:
    """A consumed message's headers (librdkafka gives a list of pairs; the
    stub also allows a dict and str values, which a consumer never gets)."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in pairs]


class GroupMember:
    """One subscribed consumer of a group. Make and use it inside the event loop."""

    def __init__(
        self,
        options: dict[str, Any],
        topics: list[str],
        *,
        on_assigned: PartitionsCallback,
        on_revoked: PartitionsCallback,
        on_lost: PartitionsCallback | None = None,
        on_error: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._topics = topics
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._on_lost = on_lost or on_revoked
        self._on_error = on_error
        options = dict(options)
        options["error_cb"] = self._error
        # daemon workers: a close or commit still waiting on an unreachable
        # broker must not hold the process at exit (bridge/kafka/calls.py)
        self._calls = DaemonExecutor("kafka-group", workers=4)
        self.consumer = AIOConsumer(options, executor=self._calls)
        self._closed = False
        #: the group dropped this member once (partitions lost, not revoked: its
        #: session ran out, e.g. a paused process), so their work went to others
        self.dropped = False

    async def _error(self, error: KafkaError) -> None:
        unreachable = error.code() in _UNREACHABLE
        log.warning(
            "Kafka consumer error",
            extra={"error": error.name(), "detail": error.str(), "fatal": error.fatal()},
        )
        if self._on_error is not None:
            self._on_error(error.name(), unreachable)

    async def subscribe(self) -> None:
        async def assigned(_: AIOConsumer, partitions: list[TopicPartition]) -> None:
            await self._on_assigned(list(partitions))

        async def revoked(_: AIOConsumer, partitions: list[TopicPartition]) -> None:
            await self._on_revoked(list(partitions))

        async def lost(_: AIOConsumer, partitions: list[TopicPartition]) -> None:
            self.dropped = True
            await self._on_lost(list(partitions))

        await self.consumer.subscribe(
            self._topics, on_assign=assigned, on_revoke=revoked, on_lost=lost
        )

    async def consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        """A batch of messages (rebalance callbacks run inside this call);
        per-message errors are logged and left out."""
        messages: list[Message] = await self.consumer.consume(max_messages, timeout_s)
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("Kafka consumer error", extra={"error": error.name()})
        return good

    def group_metadata(self) -> Any:
        """The member's group metadata (group, generation, member id) for
        ``send_offsets_to_transaction``. Synchronous on purpose: the client
        blocks this call while a ``consume`` runs in another thread (0.2 s a
        time, measured), so it is read between consumes and inside rebalance
        callbacks, where it answers at once."""
        # (AIOConsumer keeps its librdkafka consumer private; this call needs it bare)
        return self.consumer._consumer.consumer_group_metadata()

    async def confirmed_group_metadata(self, group: str) -> Any:
        """After the broker refused offsets sent with this member's metadata: the
        metadata read anew (it waits for a running consume, whose rebalance
        callbacks run first); ``FencedError`` if the group dropped this member."""
        metadata = await self.consumer.consumer_group_metadata()
        if self.dropped:
            raise FencedError(
                f"the {group} group dropped this replica and gave its partitions to "
                "others; what it was sending for them belongs to them now"
            )
        return metadata

    def positions(self) -> list[TopicPartition]:
        """Where the member reads each assigned partition, for those it knows:
        after the last message consumed, or, before any (librdkafka has no
        position then), the end of the partition as last fetched. Synchronous
        like ``group_metadata``, for the same reason."""
        consumer = self.consumer._consumer
        known = []
        for tp in consumer.position(consumer.assignment()):
            offset = tp.offset
            if offset < 0:
                _, offset = consumer.get_watermark_offsets(tp, cached=True)
            if offset >= 0:
                known.append(TopicPartition(tp.topic, tp.partition, offset))
        return known

    async def close(self) -> None:
        """Leave the group (a last revoke runs) and release the client."""
        if not self._closed:
            self._closed = True
            try:
                await self.consumer.close()
            finally:
                self._calls.shutdown(wait=False, cancel_futures=True)
