"""A Kafka consumer-group source that commits exactly what is done.

The source reads; what a message means is the handler's business (the wiring
gives it one: recording reports, later running commands). Per partition,
messages are taken in offset order; up to ``max_in_flight_per_partition`` are
handled at once, but messages with the same key wait for each other (order
kept per key). A message is *done* when its handler returned; the committed
offset moves only over an unbroken run of done messages (``OrderedAcks``),
never past one still in flight. A partition whose slots are full, or whose
messages wait on a retry, is paused rather than polled in a loop. While the
``halted`` gate is closed (the platform refuses the credentials), every
partition is paused.

On a rebalance, revoked partitions stop taking messages, their in-flight
messages get ``rebalance_timeout_s`` to finish, and what is done is
committed; anything abandoned is handled again by the new owner (at least
once: handlers make that harmless, e.g. by ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from bridge.config import KafkaConfig, ReportsConfig
from bridge.core.acks import OrderedAcks
from bridge.kafka.group import RebalanceListener, group_options, join_group
from bridge.kafka.options import KAFKA_RETRY
from bridge.observability.metrics import Metrics

__all__ = ["Message", "MessageHandler", "PartitionedConsumer"]

log = logging.getLogger(__name__)

Message: TypeAlias = "ConsumerRecord[bytes, bytes]"
#: Handles one message; when it returns, the message is done.
MessageHandler = Callable[[Message], Awaitable[None]]


@dataclass(eq=False)
class _Partition:
    tp: TopicPartition
    acks: OrderedAcks | None = None
    backlog: deque[Message] = field(default_factory=deque)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    key_tails: dict[bytes | None, asyncio.Future[None]] = field(default_factory=dict)
    committed: int = -1
    revoked: bool = False

    @property
    def committable(self) -> int | None:
        """The offset to commit (the next to read), when it moved."""
        if self.acks is None:
            return None
        next_offset = self.acks.done + 1
        return next_offset if next_offset > self.committed else None


class PartitionedConsumer:
    """Runs a consumer group on ``topics`` until ``stop()``."""

    def __init__(
        self,
        kafka: KafkaConfig,
        settings: ReportsConfig,
        topics: list[str],
        handler: MessageHandler,
        metrics: Metrics,
        *,
        halted: Callable[[], bool] = lambda: False,
        on_state: Callable[[bool, str], None] | None = None,
    ) -> None:
        self._kafka = kafka
        self._settings = settings
        self._topics = topics
        self._handler = handler
        self._metrics = metrics
        self._halted = halted
        self._on_state = on_state
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = False
        self._paused_all = False
        self._loop = asyncio.get_running_loop()
        # The first periodic commit comes one interval after the start, not at
        # once (0.0 would read as "long ago" on a host up for longer than it).
        self._last_commit = self._loop.time()

    # --- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        consumer = await self._connect()
        backoff = KAFKA_RETRY.backoff()
        while not self._stopping:
            self._apply_halt(consumer)
            try:
                batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            except KafkaError as exc:
                self._state(False, f"consumer error: {type(exc).__name__}")
                log.warning("consumer error; retrying", extra={"error": str(exc)})
                await KAFKA_RETRY.wait(backoff)
                continue
            backoff.reset()
            for tp, messages in batch.items():
                partition = self._partitions.get(tp)
                if partition is not None and not partition.revoked:
                    partition.backlog.extend(messages)
            for partition in list(self._partitions.values()):
                self._dispatch(partition)
            try:
                await self._commit(force=False)
            except KafkaError as exc:
                # Not fatal: what is done stays done and is committed next time
                # (a rebalance meanwhile only means redelivery, handled by ids).
                log.warning("offset commit failed; retrying", extra={"error": str(exc)})
            self._update_lag()
            if not self._halted():
                self._state(True, "")

    async def stop(self, timeout_s: float) -> None:
        """Stop taking messages, let in-flight ones finish (bounded), commit, leave."""
        self._stopping = True
        tasks = [t for p in self._partitions.values() for t in p.tasks]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "messages abandoned at shutdown; they are redelivered on restart",
                    extra={"abandoned": len(pending)},
                )
                await asyncio.gather(*pending, return_exceptions=True)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(KafkaError):
                await self._commit_offsets(consumer, list(self._partitions.values()))
            await consumer.stop()

    async def _connect(self) -> AIOKafkaConsumer:
        settings = self._settings
        listener = RebalanceListener(on_revoked=self._revoke, on_assigned=self._assign)

        def make() -> AIOKafkaConsumer:
            consumer = AIOKafkaConsumer(
                **group_options(
                    self._kafka,
                    group_id=settings.group_id,
                    session_timeout_ms=settings.session_timeout_ms,
                    heartbeat_interval_ms=settings.heartbeat_interval_ms,
                ),
                auto_offset_reset="earliest",
                max_poll_interval_ms=300_000,
            )
            consumer.subscribe(self._topics, listener=listener)
            return consumer

        self._consumer = await join_group(
            make, "reports", on_unreachable=lambda: self._state(False, "Kafka not reachable")
        )
        return self._consumer

    # --- rebalance ------------------------------------------------------------

    async def _assign(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            if tp not in self._partitions:
                self._partitions[tp] = _Partition(tp)
        if self._paused_all and self._consumer is not None:
            self._consumer.pause(*assigned)  # halted: new partitions wait too
        log.info("partitions assigned", extra={"partitions": _names(assigned)})

    async def _revoke(self, revoked: list[TopicPartition]) -> None:
        leaving = [self._partitions[tp] for tp in revoked if tp in self._partitions]
        for partition in leaving:
            partition.revoked = True
            partition.backlog.clear()
        tasks = [t for p in leaving for t in p.tasks]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._settings.rebalance_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await self._commit_offsets(self._consumer, leaving)
        for partition in leaving:
            self._partitions.pop(partition.tp, None)
            self._metrics.consumer_lag(partition.tp.topic, str(partition.tp.partition)).set(0)
        log.info("partitions revoked", extra={"partitions": _names(revoked)})

    # --- work -----------------------------------------------------------------

    def _dispatch(self, partition: _Partition) -> None:
        limit = self._settings.max_in_flight_per_partition
        if self._halted():
            return  # what was fetched waits in the backlog until the gate opens
        while partition.backlog and len(partition.tasks) < limit and not partition.revoked:
            message = partition.backlog.popleft()
            if partition.acks is None:
                partition.acks = OrderedAcks(start=message.offset)
                # Where consumption started needs no commit: only progress does.
                partition.committed = message.offset
            partition.acks.track(message.offset)
            task = self._loop.create_task(self._process(partition, message))
            partition.tasks.add(task)
            task.add_done_callback(partition.tasks.discard)
        consumer = self._consumer
        if consumer is None or self._paused_all or partition.revoked:
            return
        # Full or backed up: stop fetching this partition instead of buffering more.
        if partition.backlog or len(partition.tasks) >= limit:
            consumer.pause(partition.tp)
        else:
            consumer.resume(partition.tp)

    async def _process(self, partition: _Partition, message: Message) -> None:
        tail: asyncio.Future[None] = self._loop.create_future()
        previous = partition.key_tails.get(message.key)
        partition.key_tails[message.key] = tail
        try:
            if previous is not None:
                await asyncio.shield(previous)
            await self._handler(message)
            assert partition.acks is not None
            partition.acks.ack(message.offset)
        finally:
            tail.set_result(None)
            if partition.key_tails.get(message.key) is tail:
                del partition.key_tails[message.key]
            if not self._stopping:
                self._loop.call_soon(self._dispatch, partition)

    # --- offsets, halt, lag ---------------------------------------------------

    async def _commit(self, *, force: bool) -> None:
        consumer = self._consumer
        now = self._loop.time()
        if consumer is None or (
            not force and now - self._last_commit < self._settings.commit_interval_s
        ):
            return
        self._last_commit = now
        await self._commit_offsets(consumer, list(self._partitions.values()))

    async def _commit_offsets(
        self, consumer: AIOKafkaConsumer, partitions: list[_Partition]
    ) -> None:
        offsets = {p.tp: offset for p in partitions if (offset := p.committable) is not None}
        if not offsets:
            return
        await consumer.commit(offsets)
        for tp, offset in offsets.items():
            owner = self._partitions.get(tp)
            if owner is not None:
                owner.committed = offset

    def _apply_halt(self, consumer: AIOKafkaConsumer) -> None:
        halted = self._halted()
        if halted and not self._paused_all:
            consumer.pause(*consumer.assignment())
            self._paused_all = True
            self._state(False, "halted: the platform refuses the API key")
        elif not halted and self._paused_all:
            self._paused_all = False
            consumer.resume(*consumer.assignment())

    def _update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for tp, partition in self._partitions.items():
            highwater = consumer.highwater(tp)
            if highwater is None or partition.acks is None:
                continue
            lag = max(0, highwater - (partition.acks.done + 1))
            self._metrics.consumer_lag(tp.topic, str(tp.partition)).set(lag)

    def _state(self, ok: bool, detail: str) -> None:
        if self._on_state is not None:
            self._on_state(ok, detail)


def _names(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}/{tp.partition}" for tp in partitions)
