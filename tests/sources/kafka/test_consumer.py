"""The consumer-group source against a real broker: each message handled once,
order kept per key, offsets committed only over finished messages, nothing
handled while halted, and ``stop()`` commits what is done."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from confluent_kafka import Consumer, TopicPartition
from support.kafka import KafkaService, OutRecord, create_topics, produce
from support.waiting import eventually

from bridge.config import KafkaConfig, ReportsConfig
from bridge.observability.metrics import Metrics
from bridge.sources.kafka.consumer import Message, PartitionedConsumer

pytestmark = pytest.mark.timeout(60)


@dataclass
class Gate:
    """The ``halted`` callable, counting its calls: the consumer asks twice per
    poll round, so the count says how many rounds have passed."""

    closed: bool = False
    calls: int = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.closed

    async def rounds(self, n: int) -> None:
        """Return once the consumer has gone through ``n`` more poll rounds."""
        target = self.calls + 2 * n
        await eventually(lambda: self.calls >= target, timeout_s=20, what=f"{n} poll rounds")


@dataclass
class Handler:
    """Records what was handled; a message whose value is in ``blocked`` waits
    until ``release(value)``."""

    blocked: dict[bytes, asyncio.Event] = field(default_factory=dict)
    started: list[bytes] = field(default_factory=list)
    finished: list[bytes] = field(default_factory=list)
    seen: list[tuple[int, int]] = field(default_factory=list)

    def block(self, *values: bytes) -> None:
        for value in values:
            self.blocked[value] = asyncio.Event()

    def release(self, value: bytes) -> None:
        self.blocked[value].set()

    async def __call__(self, message: Message) -> None:
        value = message.value or b""
        self.seen.append((message.partition, message.offset))
        self.started.append(value)
        gate = self.blocked.get(value)
        if gate is not None:
            await gate.wait()
        else:
            await asyncio.sleep(0)
        self.finished.append(value)


def settings(kafka: KafkaService, group: str, **overrides: float) -> ReportsConfig:
    return ReportsConfig.model_validate(
        {
            "group_id": group,
            "commit_interval_s": 0.05,
            "rebalance_timeout_s": 2,
            **kafka.group_settings,
            **overrides,
        }
    )


@asynccontextmanager
async def running(
    kafka: KafkaService,
    config: ReportsConfig,
    topic: str,
    handler: Callable[[Message], Awaitable[None]],
    gate: Gate,
    *,
    stop_timeout_s: float = 2.0,
) -> AsyncIterator[PartitionedConsumer]:
    consumer = PartitionedConsumer(
        KafkaConfig(bootstrap_servers=kafka.bootstrap_servers.split(",")),
        config,
        [topic],
        handler,
        Metrics(),
        halted=gate,
    )
    runner = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        await consumer.stop(stop_timeout_s)
        try:
            await asyncio.wait_for(runner, 10)
        except TimeoutError:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            raise


class Offsets:
    """The group's committed offsets, read from the broker (no group join)."""

    def __init__(self, kafka: KafkaService, group: str, topic: str) -> None:
        self._topic = topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": group,
                "enable.auto.commit": False,
            }
        )

    async def __aenter__(self) -> Offsets:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._consumer.close)

    async def of(self, partition: int = 0) -> int | None:
        wanted = [TopicPartition(self._topic, partition)]
        (found,) = await asyncio.to_thread(self._consumer.committed, wanted, 10)
        return found.offset if found.offset >= 0 else None


async def send(kafka: KafkaService, topic: str, *records: tuple[bytes, bytes]) -> None:
    """Produce (key, value) pairs, in order."""
    await produce(kafka.bootstrap_servers, topic, [OutRecord(v, key=k) for k, v in records])


async def test_every_message_reaches_the_handler_once(
    kafka: KafkaService, topic: str, new_topic: Callable[[str], str]
) -> None:
    await create_topics(kafka.bootstrap_servers, topic, partitions=3)
    sent = [(f"key-{i % 7}".encode(), f"m-{i}".encode()) for i in range(60)]
    await send(kafka, topic, *sent)
    handler, gate, group = Handler(), Gate(), new_topic("group")
    async with running(kafka, settings(kafka, group), topic, handler, gate):
        await eventually(
            lambda: len(handler.finished) >= len(sent), timeout_s=30, what="every message"
        )
        await gate.rounds(3)  # room for a duplicate to show up
    assert sorted(handler.finished) == sorted(v for _, v in sent)
    assert len(set(handler.seen)) == len(handler.seen) == len(sent)
    async with Offsets(kafka, group, topic) as offsets:
        committed = [await offsets.of(p) or 0 for p in range(3)]
    assert sum(committed) == len(sent), "every partition committed to its end"


async def test_one_key_in_order_while_other_keys_overlap(
    kafka: KafkaService, topic: str, new_topic: Callable[[str], str]
) -> None:
    await create_topics(kafka.bootstrap_servers, topic)  # one partition: all in one queue
    await send(
        kafka, topic, (b"A", b"A1"), (b"A", b"A2"), (b"B", b"B1"), (b"B", b"B2"), (b"A", b"A3")
    )
    handler, gate = Handler(), Gate()
    handler.block(b"A1")
    async with running(kafka, settings(kafka, new_topic("group")), topic, handler, gate):
        # B's messages pass A's blocked first one: different keys overlap ...
        await eventually(
            lambda: {b"B1", b"B2"} <= set(handler.finished), timeout_s=20, what="B handled"
        )
        await gate.rounds(2)
        # ... but A's next ones wait for it: one key, in order.
        assert b"A2" not in handler.started
        assert b"A3" not in handler.started
        assert handler.finished == [b"B1", b"B2"]
        handler.release(b"A1")
        await eventually(lambda: len(handler.finished) == 5, timeout_s=20, what="A handled")
    assert [v for v in handler.started if v.startswith(b"A")] == [b"A1", b"A2", b"A3"]
    assert [v for v in handler.finished if v.startswith(b"A")] == [b"A1", b"A2", b"A3"]
    assert [v for v in handler.finished if v.startswith(b"B")] == [b"B1", b"B2"]


async def test_the_committed_offset_never_passes_a_message_still_being_handled(
    kafka: KafkaService, topic: str, new_topic: Callable[[str], str]
) -> None:
    await create_topics(kafka.bootstrap_servers, topic)
    values = [f"m{i}".encode() for i in range(6)]
    await send(kafka, topic, *[(f"k{i}".encode(), v) for i, v in enumerate(values)])
    handler, gate, group = Handler(), Gate(), new_topic("group")
    handler.block(b"m1")  # offset 1
    async with (
        running(kafka, settings(kafka, group), topic, handler, gate),
        Offsets(kafka, group, topic) as offsets,
    ):
        await eventually(
            lambda: len(handler.finished) == 5, timeout_s=20, what="all but m1 handled"
        )

        async def committed_m0() -> bool:
            return await offsets.of() == 1

        # The first commit may wait for the group's coordinator (a broker just
        # started); once there it must stop below m1 ...
        await eventually(committed_m0, timeout_s=20, what="m0's offset committed")
        await gate.rounds(3)  # ... for several commit intervals
        assert await offsets.of() == 1, "only m0 is below the unfinished m1"
        handler.release(b"m1")

        async def all_committed() -> bool:
            return await offsets.of() == 6

        await eventually(all_committed, timeout_s=20, what="the commit past m1 once it is done")


async def test_nothing_is_handled_while_halted(
    kafka: KafkaService, topic: str, new_topic: Callable[[str], str]
) -> None:
    await create_topics(kafka.bootstrap_servers, topic, partitions=2)
    sent = [(f"k{i}".encode(), f"m{i}".encode()) for i in range(8)]
    await send(kafka, topic, *sent)
    handler, gate, group = Handler(), Gate(closed=True), new_topic("group")
    async with running(kafka, settings(kafka, group), topic, handler, gate):
        await gate.rounds(4)
        assert handler.started == []
        gate.closed = False
        await eventually(
            lambda: len(handler.finished) == len(sent), timeout_s=20, what="handling after the halt"
        )
        gate.closed = True
        await send(kafka, topic, (b"k-late", b"late"))
        await gate.rounds(4)
        assert b"late" not in handler.started, "a halt after running pauses it again"
        gate.closed = False
        await eventually(lambda: b"late" in handler.finished, timeout_s=20, what="the late message")


async def test_nothing_is_handled_while_halted_across_a_rebalance(
    kafka: KafkaService, topic: str, new_topic: Callable[[str], str]
) -> None:
    await create_topics(kafka.bootstrap_servers, topic, partitions=2)
    handler, gate, group = Handler(), Gate(closed=True), new_topic("group")
    config = settings(kafka, group)
    other_handler, other_gate = Handler(), Gate(closed=True)
    async with running(kafka, config, topic, handler, gate):
        await gate.rounds(2)
        # A second member joins: the group rebalances, the first gets new partitions.
        async with running(kafka, config, topic, other_handler, other_gate):
            await other_gate.rounds(2)
            await gate.rounds(2)
            await send(kafka, topic, *[(f"k{i}".encode(), f"m{i}".encode()) for i in range(8)])
            await gate.rounds(6)
            await other_gate.rounds(2)
            assert handler.started == [], "the first member handled messages while halted"
            assert other_handler.started == []


async def test_stop_commits_what_is_done_and_not_what_was_abandoned(
    kafka: KafkaService, topic: str, new_topic: Callable[[str], str]
) -> None:
    await create_topics(kafka.bootstrap_servers, topic)
    values = [f"m{i}".encode() for i in range(5)]
    await send(kafka, topic, *[(f"k{i}".encode(), v) for i, v in enumerate(values)])
    group = new_topic("group")
    # No periodic commit within the test: whatever is committed, stop() committed.
    config = settings(kafka, group, commit_interval_s=3600)
    handler, gate = Handler(), Gate()
    handler.block(b"m3")  # never released: abandoned at stop
    async with Offsets(kafka, group, topic) as offsets:
        async with running(kafka, config, topic, handler, gate, stop_timeout_s=0.2):
            await eventually(
                lambda: len(handler.finished) == 4, timeout_s=20, what="all but m3 handled"
            )
            await gate.rounds(2)
            assert await offsets.of() is None, "nothing committed before stop"
        assert b"m3" not in handler.finished
        assert await offsets.of() == 3, "m0-m2 are done; m3 was abandoned, m4 is behind it"
    # The next member of the group starts at the abandoned message: at least once.
    again, again_gate = Handler(), Gate()
    async with running(kafka, settings(kafka, group), topic, again, again_gate):
        await eventually(lambda: len(again.finished) == 2, timeout_s=20, what="the redelivery")
        await again_gate.rounds(2)
    assert again.finished == [b"m3", b"m4"]
