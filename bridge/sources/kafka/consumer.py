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

With transactions (``transactional=True``) offsets are not committed here:
a message is *written* once the records its handler published (its last step,
seen through ``CURRENT_INPUT``) are in the open transaction, or when the
handler returns having published nothing, and the delivery loop sends the
offsets of written runs with that same transaction (``take_offsets``), so a
message's output and its offset commit together or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

from confluent_kafka import KafkaException, TopicPartition

from bridge.config import KafkaConfig
from bridge.core.acks import OrderedAcks
from bridge.core.message import InMessage
from bridge.core.record import CURRENT_INPUT, OutRecord
from bridge.kafka.group import GroupMember, group_config, in_message
from bridge.kafka.options import KAFKA_RETRY
from bridge.observability.metrics import Metrics

__all__ = ["ConsumerSettings", "Message", "MessageHandler", "PartitionedConsumer"]

log = logging.getLogger(__name__)

Message: TypeAlias = InMessage
#: Handles one message; when it returns, the message is done.
MessageHandler = Callable[[Message], Awaitable[None]]
#: a partition, as a dict key (librdkafka's TopicPartition carries an offset too)
_Key: TypeAlias = tuple[str, int]


class ConsumerSettings(Protocol):
    """What the consumer reads of its config section (``ReportsConfig``,
    ``CommandsConfig``): one group per direction."""

    @property
    def group_id(self) -> str: ...
    @property
    def max_in_flight_per_partition(self) -> int: ...
    @property
    def commit_interval_s(self) -> float: ...
    @property
    def session_timeout_ms(self) -> int: ...
    @property
    def heartbeat_interval_ms(self) -> int: ...
    @property
    def rebalance_timeout_s(self) -> float: ...


@dataclass(eq=False)
class _Partition:
    key: _Key
    acks: OrderedAcks | None = None
    backlog: deque[Message] = field(default_factory=deque)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    key_tails: dict[bytes | None, asyncio.Future[None]] = field(default_factory=dict)
    committed: int = -1
    revoked: bool = False
    #: transactions: offsets whose output is written (in the open transaction or
    #: before); the next offset to send with a transaction, and the last sent
    written: OrderedAcks | None = None
    sent: int = -1

    @property
    def sendable(self) -> int | None:
        """Transactions: the offset to send with the open transaction, when it moved."""
        if self.written is None:
            return None
        next_offset = self.written.done + 1
        return next_offset if next_offset > max(self.sent, self.committed) else None

    @property
    def committable(self) -> int | None:
        """The offset to commit (the next to read), when it moved."""
        if self.acks is None:
            return None
        next_offset = self.acks.done + 1
        return next_offset if next_offset > self.committed else None


class PartitionedConsumer:
    """Runs a consumer group on ``topics`` until ``stop()``."""

    def __init__(  # noqa: PLR0913  (the wiring sets the gate, the state and the mode)
        self,
        kafka: KafkaConfig,
        settings: ConsumerSettings,
        topics: list[str],
        handler: MessageHandler,
        metrics: Metrics,
        *,
        halted: Callable[[], bool] = lambda: False,
        on_state: Callable[[bool, str], None] | None = None,
        transactional: bool = False,
    ) -> None:
        self._kafka = kafka
        self._settings = settings
        self._topics = topics
        self._handler = handler
        self._metrics = metrics
        self._halted = halted
        self._on_state = on_state
        self._partitions: dict[_Key, _Partition] = {}
        self._member: GroupMember | None = None
        #: what each partition should be (paused or not), applied once per fetch round
        self._want_paused: dict[_Key, bool] = {}
        self._paused: set[_Key] = set()
        self._transactional = transactional
        #: set while written offsets wait for a transaction to carry them
        self.offsets_pending = asyncio.Event()
        self._committed_moved = asyncio.Event()
        #: the member's generation for transactional offset commits (see ``current``)
        self._group_metadata: Any = None
        self._stopping = False
        #: the fetch loop is running / has ended (``stop`` closes the consumer after it)
        self._running = asyncio.Event()
        self._ran = asyncio.Event()
        self._paused_all = False
        self._loop = asyncio.get_running_loop()
        # The first periodic commit comes one interval after the start, not at
        # once (0.0 would read as "long ago" on a host up for longer than it).
        self._last_commit = self._loop.time()

    @property
    def assigned(self) -> int:
        """Partitions this member holds now."""
        return len(self._partitions)

    # --- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        self._running.set()
        try:
            await self._run()
        finally:
            self._running.clear()
            self._ran.set()

    async def _run(self) -> None:
        member = self._connect()
        await member.subscribe()
        backoff = KAFKA_RETRY.backoff()
        while not self._stopping:
            try:
                await self._apply_pauses(member)
                messages = await member.consume(1000, 0.2)
            except KafkaException as exc:
                self._state(False, f"consumer error: {exc}")
                log.warning("consumer error; retrying", extra={"error": str(exc)})
                await KAFKA_RETRY.wait(backoff)
                continue
            backoff.reset()
            self._read_group_metadata(member)
            for raw in messages:
                message = in_message(raw)
                partition = self._partitions.get((message.topic, message.partition))
                if partition is not None and not partition.revoked:
                    partition.backlog.append(message)
            for partition in list(self._partitions.values()):
                self._dispatch(partition)
            try:
                await self._commit(force=False)
            except KafkaException as exc:
                # Not fatal: what is done stays done and is committed next time
                # (a rebalance meanwhile only means redelivery, handled by ids).
                log.warning("offset commit failed; retrying", extra={"error": str(exc)})
            await self._update_lag(member)
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
        if self._running.is_set():
            # The fetch loop finishes its round (a fetch waits 0.2 s at most)
            # before the consumer under it is closed.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ran.wait(), 5)
        member = self._member
        if member is not None:
            with contextlib.suppress(KafkaException):
                await self._commit_offsets(list(self._partitions.values()))
            self._member = None
            await member.close()  # leaves the group: its final revoke finds nothing to do

    def _connect(self) -> GroupMember:
        settings = self._settings
        self._member = GroupMember(
            group_config(
                self._kafka,
                group_id=settings.group_id,
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=settings.heartbeat_interval_ms,
            ),
            self._topics,
            on_assigned=self._assign,
            on_revoked=self._revoke,
            on_lost=self._lose,
            on_error=self._consumer_error,
        )
        return self._member

    def _consumer_error(self, name: str, unreachable: bool) -> None:
        if unreachable:
            self._state(False, "Kafka not reachable")

    # --- rebalance ------------------------------------------------------------

    async def _assign(self, assigned: list[TopicPartition]) -> None:
        self._read_group_metadata(self._member)
        for tp in assigned:
            key = (tp.topic, tp.partition)
            if key not in self._partitions:
                self._partitions[key] = _Partition(key)
            self._paused.discard(key)  # a new assignment starts unpaused
            if self._paused_all:
                self._want_paused[key] = True  # halted: new partitions wait too
        log.info("partitions assigned", extra={"partitions": _names(assigned)})

    async def _lose(self, lost: list[TopicPartition]) -> None:
        """The group dropped this member (session timed out: a pause, a partition
        of the network): the partitions are someone else's already."""
        log.warning("partitions lost", extra={"partitions": _names(lost)})
        await self._revoke(lost)

    async def _revoke(self, revoked: list[TopicPartition]) -> None:
        self._read_group_metadata(self._member)
        keys = [(tp.topic, tp.partition) for tp in revoked]
        leaving = [self._partitions[key] for key in keys if key in self._partitions]
        for partition in leaving:
            partition.revoked = True
            partition.backlog.clear()
        tasks = [t for p in leaving for t in p.tasks]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._settings.rebalance_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(KafkaException):
            await self._commit_offsets(leaving)
        for partition in leaving:
            self._partitions.pop(partition.key, None)
            self._want_paused.pop(partition.key, None)
            self._paused.discard(partition.key)
            topic, number = partition.key
            self._metrics.consumer_lag(topic, str(number)).set(0)
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
                if self._transactional:  # only transactions send written runs
                    partition.written = OrderedAcks(start=message.offset)
                # Where consumption started needs no commit: only progress does.
                partition.committed = message.offset
            partition.acks.track(message.offset)
            if partition.written is not None:
                partition.written.track(message.offset)
            task = self._loop.create_task(self._process(partition, message))
            partition.tasks.add(task)
            task.add_done_callback(partition.tasks.discard)
        if self._paused_all or partition.revoked:
            return
        # Full or backed up: stop fetching this partition instead of buffering more.
        self._want_paused[partition.key] = bool(partition.backlog) or len(partition.tasks) >= limit

    async def _process(self, partition: _Partition, message: Message) -> None:
        tail: asyncio.Future[None] = self._loop.create_future()
        previous = partition.key_tails.get(message.key)
        partition.key_tails[message.key] = tail
        try:
            if previous is not None:
                await asyncio.shield(previous)
            progress = _Progress(self, partition, message.offset)
            token = CURRENT_INPUT.set(progress)
            try:
                await self._handler(message)
            finally:
                CURRENT_INPUT.reset(token)
            progress.handled()
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
        now = self._loop.time()
        if self._member is None or (
            not force and now - self._last_commit < self._settings.commit_interval_s
        ):
            return
        if self._transactional and not force:
            # The delivery loop's transactions carry the offsets: waiting here
            # for them would only stall the fetch loop every interval.
            return
        self._last_commit = now
        await self._commit_offsets(list(self._partitions.values()))

    def written(self, partition: _Partition, offset: int) -> None:
        """Transactions: the message's output is in Kafka (committed or in the open
        transaction); its offset may ride with the next commit."""
        # (a revoked partition's in-flight messages still finish, and count)
        if partition.written is not None:
            partition.written.ack(offset)
            if partition.sendable is not None:
                self.offsets_pending.set()

    def take_offsets(self) -> list[TopicPartition]:
        """Transactions: the offsets to send with the open transaction (each
        partition's written run), taken once for that transaction."""
        self.offsets_pending.clear()
        taken = [(p, offset) for p in self._partitions.values() if (offset := p.sendable)]
        for partition, offset in taken:
            partition.sent = offset
        return [TopicPartition(p.key[0], p.key[1], offset) for p, offset in taken]

    def current(self, offsets: list[TopicPartition]) -> tuple[list[TopicPartition], Any] | None:
        """Transactions: of ``offsets``, those of partitions still held (a redone
        transaction may outlive a revoke), with the group metadata of now, which
        lets the broker refuse them from a member the group has moved on from."""
        held = [tp for tp in offsets if (tp.topic, tp.partition) in self._partitions]
        if not held or self._group_metadata is None:
            return None
        return held, self._group_metadata

    async def rejected(self) -> None:
        """Transactions: the broker refused our offsets for their generation."""
        if self._member is not None:
            self._group_metadata = await self._member.confirmed_group_metadata(
                self._settings.group_id
            )

    def _read_group_metadata(self, member: GroupMember | None) -> None:
        """Only where no ``consume`` runs: between rounds and in rebalance callbacks."""
        if self._transactional and member is not None:
            self._group_metadata = member.group_metadata()

    def offsets_committed(self, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            partition = self._partitions.get((tp.topic, tp.partition))
            if partition is not None:
                partition.committed = max(partition.committed, tp.offset)
        self._committed_moved.set()

    async def _sent_with_transactions(self, partitions: list[_Partition], timeout_s: float) -> None:
        """Transactions: until the written offsets of ``partitions`` are committed
        by the delivery loop (or ``timeout_s``): a revoke and a stop wait here."""
        loop = self._loop
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            behind = [
                p for p in partitions if p.written is not None and p.written.done + 1 > p.committed
            ]
            if not behind:
                return
            self.offsets_pending.set()
            self._committed_moved.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._committed_moved.wait()
        log.warning("offsets not committed in time; those messages are handled again")

    async def _commit_offsets(self, partitions: list[_Partition]) -> None:
        """The one place offsets are committed (only over acknowledged runs)."""
        if self._transactional:
            await self._sent_with_transactions(partitions, self._settings.rebalance_timeout_s)
            return
        member = self._member
        offsets = {p.key: offset for p in partitions if (offset := p.committable) is not None}
        if member is None or not offsets:
            return
        await member.consumer.commit(
            offsets=[TopicPartition(t, n, offset) for (t, n), offset in offsets.items()],
            asynchronous=False,
        )
        for key, offset in offsets.items():
            owner = self._partitions.get(key)
            if owner is not None:
                owner.committed = offset

    async def _apply_pauses(self, member: GroupMember) -> None:
        """Pause and resume what ``_dispatch`` and the halt gate asked for, in
        two calls (each is a round trip to librdkafka's thread)."""
        halted = self._halted()
        if halted and not self._paused_all:
            self._paused_all = True
            self._state(False, "halted: the platform refuses the API key")
        elif not halted and self._paused_all:
            self._paused_all = False
        want = {
            key: self._paused_all or self._want_paused.get(key, False) for key in self._partitions
        }
        pause = [k for k, paused in want.items() if paused and k not in self._paused]
        resume = [k for k, paused in want.items() if not paused and k in self._paused]
        if pause:
            await member.consumer.pause([TopicPartition(t, n) for t, n in pause])
            self._paused.update(pause)
        if resume:
            await member.consumer.resume([TopicPartition(t, n) for t, n in resume])
            self._paused.difference_update(resume)

    async def _update_lag(self, member: GroupMember) -> None:
        for key, partition in self._partitions.items():
            if partition.acks is None:
                continue
            topic, number = key
            try:
                _, highwater = await member.consumer.get_watermark_offsets(
                    TopicPartition(topic, number), cached=True
                )
            except KafkaException:
                continue
            if highwater < 0:
                continue  # not known until a fetch answered for the partition
            lag = max(0, highwater - (partition.acks.done + 1))
            self._metrics.consumer_lag(topic, str(number)).set(lag)

    def _state(self, ok: bool, detail: str) -> None:
        if self._on_state is not None:
            self._on_state(ok, detail)


class _Progress:
    """One message being handled: how many of its output records are not yet
    written (``CURRENT_INPUT`` hands the handler's records here)."""

    __slots__ = ("_consumer", "_offset", "_outstanding", "_partition", "_published")

    def __init__(self, consumer: PartitionedConsumer, partition: _Partition, offset: int) -> None:
        self._consumer = consumer
        self._partition = partition
        self._offset = offset
        self._outstanding = 0
        self._published = False

    def output(self, records: list[OutRecord]) -> None:
        self._published = True
        self._outstanding += len(records)
        for record in records:
            record.on_written = self._chain(record.on_written)

    def _chain(self, original: Callable[[OutRecord], None] | None) -> Callable[[OutRecord], None]:
        def written(record: OutRecord) -> None:
            if original is not None:
                original(record)
            self._outstanding -= 1
            if self._outstanding == 0:
                self._consumer.written(self._partition, self._offset)

        return written

    def handled(self) -> None:
        if not self._published:  # nothing to wait for: written now
            self._consumer.written(self._partition, self._offset)


def _names(partitions: list[TopicPartition]) -> str:  # (librdkafka's, from the callbacks)
    return ",".join(f"{tp.topic}/{tp.partition}" for tp in partitions)
