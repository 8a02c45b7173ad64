"""Consuming report and metrics messages in a consumer group, recording each on
the platform, committing exactly what is done.

Per partition: messages are taken in offset order; up to
``reports.max_in_flight_per_partition`` are recorded at once, but messages with
the same key wait for each other (order kept per key). A message is *done*
when it was recorded (2xx) and its mirror envelope acknowledged by Kafka, or
when its dead-letter record was acknowledged. The committed offset moves only
over an unbroken run of done messages (``OrderedAcks``), never past one still
in flight. A partition whose slots are full, or whose messages wait on a
retry, is paused rather than polled in a loop.

On a rebalance, revoked partitions stop taking messages, their in-flight
recordings get ``reports.rebalance_timeout_s`` to finish, and what is done is
committed; anything abandoned is recorded again by the new owner (at least
once; the report id keeps that from creating a second task).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from bridge.config import BridgeConfig
from bridge.errors import InvalidDataError, RejectedError
from bridge.kafka.group import join_group
from bridge.observability.metrics import DeadLetterReason, Metrics, ReportOutcome
from bridge.pipeline.acks import OrderedAcks
from bridge.pipeline.record import Publish, completion
from bridge.sinks.kafka.dead_letter import dead_letter
from bridge.sinks.kafka.producer import client_options
from bridge.sinks.platform.recorder import Recorder
from bridge.transforms.envelope import EventSource
from bridge.transforms.normalize import Normalizer, TaskState
from bridge.transforms.reports import ParsedMessage, ReportKind, parse_message

__all__ = ["ReportsSource"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Partition:
    tp: TopicPartition
    kind: ReportKind
    acks: OrderedAcks | None = None
    backlog: deque[ConsumerRecord[bytes, bytes]] = field(default_factory=deque)
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


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: ReportsSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._source.revoke(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._source.assign(assigned)


class ReportsSource:
    """Runs the Kafka-to-platform direction until ``stop()``."""

    def __init__(
        self,
        config: BridgeConfig,
        recorder: Recorder,
        normalizer: Normalizer,
        publish: Publish,
        metrics: Metrics,
        *,
        on_state: Callable[[bool, str], None] | None = None,
    ) -> None:
        self._config = config
        self._reports = config.reports
        self._recorder = recorder
        self._normalizer = normalizer
        self._publish = publish
        self._metrics = metrics
        self._on_state = on_state
        self._kinds = {
            config.reports.reports_topic: ReportKind.REPORT,
            config.reports.metrics_topic: ReportKind.METRICS,
        }
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._recent: OrderedDict[tuple[ReportKind, str], None] = OrderedDict()
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = False
        self._paused_all = False
        self._last_commit = 0.0
        self._loop = asyncio.get_running_loop()

    # --- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        await self._connect()
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping:
            self._apply_halt(consumer)
            try:
                batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            except KafkaError as exc:
                self._state(False, f"consumer error: {type(exc).__name__}")
                log.warning("report consumer error; retrying", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
                continue
            for tp, messages in batch.items():
                partition = self._partitions.get(tp)
                if partition is None or partition.revoked:
                    continue
                for message in messages:
                    self._metrics.reports_consumed(partition.kind).inc()
                    partition.backlog.append(message)
            for partition in list(self._partitions.values()):
                self._dispatch(partition)
            await self._commit(force=False)
            self._update_lag()
            if not self._recorder.halted:
                self._state(True, "")

    async def stop(self, timeout_s: float) -> None:
        """Stop taking messages, let in-flight ones finish (bounded), commit, leave."""
        self._stopping = True
        consumer = self._consumer
        tasks = [t for p in self._partitions.values() for t in p.tasks]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "report recordings abandoned at shutdown; they are redelivered on restart",
                    extra={"abandoned": len(pending)},
                )
                await asyncio.gather(*pending, return_exceptions=True)
        if consumer is not None:
            with contextlib.suppress(KafkaError):
                await self._commit(force=True)
            await consumer.stop()
            self._consumer = None

    async def _connect(self) -> None:
        reports = self._reports

        def make() -> AIOKafkaConsumer:
            consumer = AIOKafkaConsumer(
                **client_options(self._config.kafka),
                group_id=reports.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=reports.session_timeout_ms,
                heartbeat_interval_ms=reports.heartbeat_interval_ms,
                max_poll_interval_ms=300_000,
            )
            consumer.subscribe(list(self._kinds), listener=_Listener(self))
            return consumer

        self._consumer = await join_group(
            make, "reports", on_unreachable=lambda: self._state(False, "Kafka not reachable")
        )

    # --- rebalance ------------------------------------------------------------

    def assign(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            if tp not in self._partitions:
                self._partitions[tp] = _Partition(tp, self._kinds[tp.topic])
        log.info("report partitions assigned", extra={"partitions": _names(assigned)})

    async def revoke(self, revoked: list[TopicPartition]) -> None:
        leaving = [self._partitions[tp] for tp in revoked if tp in self._partitions]
        for partition in leaving:
            partition.revoked = True
            partition.backlog.clear()
        tasks = [t for p in leaving for t in p.tasks]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._reports.rebalance_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(KafkaError):
            await self._commit(force=True, only=leaving)
        for partition in leaving:
            self._partitions.pop(partition.tp, None)
            self._metrics.consumer_lag(partition.tp.topic, str(partition.tp.partition)).set(0)
        log.info("report partitions revoked", extra={"partitions": _names(revoked)})

    # --- work -----------------------------------------------------------------

    def _dispatch(self, partition: _Partition) -> None:
        consumer = self._consumer
        limit = self._reports.max_in_flight_per_partition
        while partition.backlog and len(partition.tasks) < limit and not partition.revoked:
            message = partition.backlog.popleft()
            if partition.acks is None:
                partition.acks = OrderedAcks(start=message.offset)
            partition.acks.track(message.offset)
            task = self._loop.create_task(self._process(partition, message))
            partition.tasks.add(task)
            task.add_done_callback(partition.tasks.discard)
        if consumer is None or self._paused_all or partition.revoked:
            return
        # Full or backed up: stop fetching this partition instead of buffering more.
        if partition.backlog or len(partition.tasks) >= limit:
            consumer.pause(partition.tp)
        else:
            consumer.resume(partition.tp)

    async def _process(self, partition: _Partition, message: ConsumerRecord[bytes, bytes]) -> None:
        started = self._loop.time()
        kind = partition.kind
        tail: asyncio.Future[None] = self._loop.create_future()
        previous = partition.key_tails.get(message.key)
        partition.key_tails[message.key] = tail
        try:
            if previous is not None:
                await asyncio.shield(previous)
            outcome = await self._handle(kind, message)
            self._metrics.reports_recorded(kind, outcome).inc()
            self._metrics.report_record_latency.observe(self._loop.time() - started)
            assert partition.acks is not None
            partition.acks.ack(message.offset)
        finally:
            tail.set_result(None)
            if partition.key_tails.get(message.key) is tail:
                del partition.key_tails[message.key]
            if not self._stopping:
                self._loop.call_soon(self._dispatch, partition)

    async def _handle(
        self, kind: ReportKind, message: ConsumerRecord[bytes, bytes]
    ) -> ReportOutcome:
        try:
            parsed = parse_message(
                kind,
                message.value,
                message.key,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            )
        except InvalidDataError as exc:
            await self._dead_letter(message, DeadLetterReason.INVALID_REPORT, str(exc), None)
            return ReportOutcome.DEAD_LETTERED
        recent_key = (kind, parsed.task_id)
        if recent_key in self._recent:
            return ReportOutcome.DUPLICATE
        try:
            answer = await self._recorder.record(parsed)
        except RejectedError as exc:
            await self._dead_letter(
                message, DeadLetterReason.PLATFORM_REJECTED, str(exc), exc.status
            )
            return ReportOutcome.DEAD_LETTERED
        if kind is ReportKind.REPORT:
            await self._mirror(parsed, answer)
        self._remember(recent_key)
        return ReportOutcome.RECORDED

    async def _mirror(self, parsed: ParsedMessage, answer: Any) -> None:
        """Publish the recorded run as an envelope with ``source: report``."""
        task = answer if isinstance(answer, dict) else {"id": parsed.task_id}
        state = TaskState(
            task_id=parsed.task_id,
            agent_id=parsed.agent_id,
            organization_id=self._config.platform.organization_id,
        )
        records = self._normalizer.emit(
            state,
            "task_finished",
            task,
            source=EventSource.REPORT,
            occurred_at=task.get("finished_at")
            if isinstance(task.get("finished_at"), str)
            else None,
            received_at=self._loop.time(),
            id_material=b"report\x00" + parsed.task_id.encode(),
        )
        done = completion(records)
        await self._publish(records)
        await done

    async def _dead_letter(
        self,
        message: ConsumerRecord[bytes, bytes],
        reason: DeadLetterReason,
        error: str,
        status: int | None,
    ) -> None:
        log.warning(
            "report message dead-lettered",
            extra={
                "reason": reason,
                "error": error,
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
            },
        )
        record = dead_letter(
            topic=self._config.topics.dlq,
            value=message.value or b"",
            key=message.key,
            reason=reason,
            error=error,
            source="kafka",
            received_at=self._loop.time(),
            attributes={
                "original_topic": message.topic,
                "original_partition": message.partition,
                "original_offset": message.offset,
                "status": status,
            },
            original_headers=list(message.headers or ()),
        )
        done = completion([record])
        await self._publish([record])
        await done

    def _remember(self, key: tuple[ReportKind, str]) -> None:
        size = self._reports.dedupe_cache_size
        if size <= 0:
            return
        self._recent[key] = None
        while len(self._recent) > size:
            self._recent.popitem(last=False)

    # --- offsets, halt, lag ---------------------------------------------------

    async def _commit(self, *, force: bool, only: list[_Partition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        now = self._loop.time()
        if not force and now - self._last_commit < self._reports.commit_interval_s:
            return
        offsets: dict[TopicPartition, int] = {}
        for candidate in only if only is not None else self._partitions.values():
            offset = candidate.committable
            if offset is not None:
                offsets[candidate.tp] = offset
        self._last_commit = now
        if not offsets:
            return
        await consumer.commit(offsets)
        for tp, offset in offsets.items():
            owner = self._partitions.get(tp)
            if owner is not None:
                owner.committed = offset

    def _apply_halt(self, consumer: AIOKafkaConsumer) -> None:
        halted = self._recorder.halted
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


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _names(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}/{tp.partition}" for tp in partitions)
