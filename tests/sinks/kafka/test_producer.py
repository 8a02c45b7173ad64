"""The Kafka sink against a real broker: topics on connect, writes acknowledged
by the broker and read back as written, errors as bridge errors."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from support.kafka import KafkaService, consume, create_topics, described

from bridge.config import (
    BridgeConfig,
    CoordinationConfig,
    KafkaConfig,
    RouteRule,
    TopicsConfig,
)
from bridge.core.record import OutRecord
from bridge.errors import (
    AuthError,
    BridgeError,
    ConfigError,
    FencedError,
    InvalidDataError,
    RecordTooLargeError,
    RequestTimeoutError,
    RetryableError,
    TransactionAbortedError,
    UnavailableError,
)
from bridge.kafka.producer import AsyncProducer
from bridge.kafka.topics import flow_topics
from bridge.sinks.kafka.producer import KafkaSink

pytestmark = pytest.mark.timeout(60)


def kafka_config(bootstrap_servers: str, **overrides: object) -> KafkaConfig:
    values: dict[str, object] = {
        "bootstrap_servers": bootstrap_servers.split(","),
        "enable_idempotence": False,
        "linger_ms": 2,
        "request_timeout_ms": 5000,
    }
    values.update(overrides)
    return KafkaConfig.model_validate(values)


def topics_config(new_topic: Callable[[str], str], **overrides: object) -> TopicsConfig:
    values: dict[str, object] = {
        "events": new_topic("events"),
        "state": new_topic("state"),
        "dlq": new_topic("dlq"),
        "partitions": 3,
    }
    values.update(overrides)
    return TopicsConfig.model_validate(values)


class Connected(NamedTuple):
    sink: KafkaSink
    events: str


@pytest.fixture
async def connected(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> AsyncIterator[Connected]:
    """A connected sink and its (three-partition) events topic."""
    topics = topics_config(new_topic)
    sink = KafkaSink(kafka_config(kafka.bootstrap_servers), topics)
    await sink.connect()
    try:
        yield Connected(sink, topics.events)
    finally:
        await sink.aclose()


def record(
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    partition: int | None = None,
) -> OutRecord:
    return OutRecord(topic, key, value, headers or [], "chunk", 0.0, partition=partition)


# --- connect ------------------------------------------------------------------------


async def test_connect_creates_every_topic_with_compaction_where_configured(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    routed = new_topic("routed")
    topics = topics_config(new_topic, routes=[RouteRule(types=["chunk"], topic=routed)])
    coordination = CoordinationConfig(
        tasks_topic=new_topic("tasks"), checkpoints_topic=new_topic("checkpoints"), partitions=4
    )
    sink = KafkaSink(kafka_config(kafka.bootstrap_servers), topics, coordination)
    await sink.connect()
    try:
        assert sink.connected
        got = await described(
            kafka.bootstrap_servers,
            [
                topics.events,
                topics.dlq,
                topics.state,
                routed,
                coordination.tasks_topic,
                coordination.checkpoints_topic,
            ],
        )
    finally:
        await sink.aclose()
    assert got[topics.events][0] == 3
    assert got[topics.dlq][0] == 3
    assert got[routed][0] == 3
    assert got[topics.state] == (3, "compact")
    # Co-partitioned with each other, not with the event topics.
    assert got[coordination.tasks_topic] == (4, "compact")
    assert got[coordination.checkpoints_topic] == (4, "compact")
    for name in (topics.events, topics.dlq, routed):
        assert got[name][1] in (None, "delete"), name


async def test_connect_creates_the_topics_of_the_enabled_flows(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    names: dict[str, dict[str, Any]] = {
        "reports": {"reports_topic": new_topic("reports"), "metrics_topic": new_topic("metrics")},
        "commands": {
            "commands_topic": new_topic("commands"),
            "results_topic": new_topic("results"),
            "reply_topics": [new_topic("elsewhere")],
        },
    }
    off = BridgeConfig.model_validate(
        {section: {**fields, "enabled": False} for section, fields in names.items()}
    )
    assert flow_topics(off) == []
    on = BridgeConfig.model_validate(
        {"discovery": {"agent_ids": ["agent-1"]}}
        | {section: {**fields, "enabled": True} for section, fields in names.items()}
    )
    created = flow_topics(on)
    assert created == [
        on.reports.reports_topic,
        on.reports.metrics_topic,
        on.commands.commands_topic,
        on.commands.results_topic,
    ]
    sink = KafkaSink(
        kafka_config(kafka.bootstrap_servers), topics_config(new_topic), flow_topics=created
    )
    await sink.connect()
    await sink.aclose()
    got = await described(kafka.bootstrap_servers, [*created, on.commands.reply_topics[0]])
    assert [got[name][0] for name in created] == [3, 3, 3, 3]
    assert got[on.commands.reply_topics[0]][0] == 0  # a requester's topic: theirs to create


async def test_connect_leaves_existing_topics_alone(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    # A second replica (or a restart) connects to topics that already exist.
    topics = topics_config(new_topic)
    first = KafkaSink(kafka_config(kafka.bootstrap_servers), topics)
    await first.connect()
    await first.aclose()
    second = KafkaSink(
        kafka_config(kafka.bootstrap_servers), topics.model_copy(update={"partitions": 5})
    )
    await second.connect()
    try:
        assert second.connected
    finally:
        await second.aclose()
    got = await described(kafka.bootstrap_servers, [topics.events])
    assert got[topics.events][0] == 3


async def test_connect_without_topic_creation_names_the_missing_topics(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    topics = topics_config(new_topic, create=False)
    sink = KafkaSink(kafka_config(kafka.bootstrap_servers), topics)
    with pytest.raises(ConfigError) as raised:
        await sink.connect()
    assert raised.value.field == "topics.create"
    assert topics.events in str(raised.value)
    assert not sink.connected
    with pytest.raises(UnavailableError):
        await sink.write(record(topics.events, b"x"))


def nobody_listens() -> int:
    """A port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_connect_to_an_unreachable_address_raises_unavailable() -> None:
    port = nobody_listens()
    sink = KafkaSink(
        kafka_config(f"127.0.0.1:{port}"),
        TopicsConfig(events="e", state="s", dlq="d"),
    )
    with pytest.raises(UnavailableError) as raised:
        await sink.connect()
    assert not isinstance(raised.value, ConfigError)
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert not sink.connected
    await sink.aclose()


class RefusingProducer(AsyncProducer):
    """librdkafka's answer of a broker without transactions, at the one call that
    gets it (no broker here lacks them: tansu has them through librdkafka)."""

    def __init__(self, error: int) -> None:  # no client: nothing to connect
        self._error = error

    async def init_transactions(self, timeout_s: float) -> None:
        raise KafkaException(KafkaError(self._error))


@pytest.mark.parametrize("code", [KafkaError._NOT_IMPLEMENTED, KafkaError.UNSUPPORTED_VERSION])
async def test_transactions_on_a_broker_without_them_is_a_config_error(code: int) -> None:
    sink = KafkaSink(
        kafka_config("127.0.0.1:9"),
        TopicsConfig(events="e", state="s", dlq="d"),
        transactional_id="t",
    )
    with pytest.raises(ConfigError) as raised:
        await sink._init_transactions(RefusingProducer(code))
    assert raised.value.field == "kafka.transactions"
    assert "XPANDER_BRIDGE_KAFKA__TRANSACTIONS=false" in str(raised.value), "says how to fix it"


def read_committed(bootstrap_servers: str, topic: str, seconds: float) -> list[bytes | None]:
    """Every record a read_committed consumer sees in ``seconds`` (partition 0)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "test-read-committed",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen: list[bytes | None] = []
    try:
        for message in consumer.consume(1000, seconds):
            if message.error() is None:
                seen.append(message.value())
    finally:
        consumer.close()
    return seen


async def test_a_transaction_is_invisible_to_read_committed_until_it_commits(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    topics = topics_config(new_topic, partitions=1)
    sink = KafkaSink(
        kafka_config(kafka.bootstrap_servers), topics, transactional_id=new_topic("txn")
    )
    await sink.connect()
    failures: list[tuple[OutRecord, BaseException]] = []
    try:
        await sink.begin()
        await sink.write_quiet(record(topics.events, b"first", key=b"k"), failures)
        await sink.commit()
        await sink.begin()
        await sink.write_quiet(record(topics.events, b"open", key=b"k"), failures)
        assert await sink.flush() == 0 and failures == []
        # written to the log, not committed: a read_committed reader stops before it
        assert await asyncio.to_thread(
            read_committed, kafka.bootstrap_servers, topics.events, 2
        ) == [b"first"]
        await sink.commit()
        seen = await asyncio.to_thread(read_committed, kafka.bootstrap_servers, topics.events, 2)
        assert seen == [b"first", b"open"]
    finally:
        await sink.aclose()


class Partners(NamedTuple):
    topics: TopicsConfig
    sink: KafkaSink
    partner: KafkaSink


@contextlib.asynccontextmanager
async def overlapping(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> AsyncIterator[Partners]:
    """A transactional sink and its partner on a one-partition topic, each with
    a transaction open: the sink's holds ``first``, then the partner's
    ``second``, both flushed (the producers of pipelined transactions)."""
    topics = topics_config(new_topic, partitions=1)
    sink = KafkaSink(
        kafka_config(kafka.bootstrap_servers), topics, transactional_id=new_topic("txn")
    )
    partner = sink.partner()
    await sink.connect()
    try:
        await partner.connect()  # (it leaves the topics to the sink)
        try:
            failures: list[tuple[OutRecord, BaseException]] = []
            for producer, value in ((sink, b"first"), (partner, b"second")):
                await producer.begin()
                await producer.write_quiet(record(topics.events, value, key=b"k"), failures)
                assert await producer.flush() == 0 and failures == []
            yield Partners(topics, sink, partner)
        finally:
            await partner.aclose()
    finally:
        await sink.aclose()


async def test_a_partner_producer_writes_while_its_sink_commits(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    # Each transaction is read once committed, in log order.
    async with overlapping(kafka, new_topic) as (topics, sink, partner):
        assert partner.transactional_id == f"{sink.transactional_id}#2"
        await sink.commit()
        await partner.commit()
        seen = await asyncio.to_thread(read_committed, kafka.bootstrap_servers, topics.events, 2)
        assert seen == [b"first", b"second"]


@pytest.mark.requires_kafka("overlapping_transactions")
async def test_read_committed_sees_a_transaction_committed_while_the_next_is_open(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    # What makes pipelined transactions worth it: a transaction is visible once
    # it commits, though the partner's, written after it, is still open; and
    # nothing of one aborted behind an open one. (tansu holds the reader until
    # no transaction is open: docs/notes/tansu.md.)
    async with overlapping(kafka, new_topic) as (topics, sink, partner):

        async def seen() -> list[bytes | None]:
            return await asyncio.to_thread(
                read_committed, kafka.bootstrap_servers, topics.events, 2
            )

        await sink.commit()
        assert await seen() == [b"first"]  # the partner's is open behind it
        await sink.begin()
        await sink.write_quiet(record(topics.events, b"aborted", key=b"k"), [])
        assert await sink.flush() == 0
        await partner.commit()
        assert await seen() == [b"first", b"second"]
        await sink.abort()
        assert await seen() == [b"first", b"second"]


class SameSlot(NamedTuple):
    topics: TopicsConfig
    zombie: KafkaSink
    successor: KafkaSink


@contextlib.asynccontextmanager
async def same_slot(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> AsyncIterator[SameSlot]:
    """Two sinks with one transactional.id; the first connected, the second
    connects (and fences it) when the test says."""
    topics = topics_config(new_topic, partitions=1)
    slot = new_topic("slot")
    zombie = KafkaSink(kafka_config(kafka.bootstrap_servers), topics, transactional_id=slot)
    successor = KafkaSink(kafka_config(kafka.bootstrap_servers), topics, transactional_id=slot)
    await zombie.connect()
    try:
        yield SameSlot(topics, zombie, successor)
    finally:
        await asyncio.wait_for(zombie.aclose(), 10)  # (it hung here once)
        await successor.aclose()


async def test_a_second_producer_with_the_same_transactional_id_fences_the_first(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    async with same_slot(kafka, new_topic) as (topics, zombie, successor):
        failures: list[tuple[OutRecord, BaseException]] = []
        await zombie.begin()
        await zombie.write_quiet(record(topics.events, b"before", key=b"k"), failures)
        assert await zombie.flush() == 0 and failures == []
        await successor.connect()  # takes the id: the zombie's epoch is over
        await successor.begin()
        await successor.write_quiet(record(topics.events, b"new", key=b"k"), [])
        await successor.commit()
        try:
            await zombie.write_quiet(record(topics.events, b"after", key=b"k"), failures)
            await zombie.flush()
        except FencedError:
            pass  # refused as it was handed over
        else:
            if failures:  # the broker refused the write itself
                assert all(isinstance(KafkaSink.classify(e), FencedError) for _, e in failures)
            else:
                with pytest.raises(FencedError):
                    await zombie.commit()
        seen = await asyncio.to_thread(read_committed, kafka.bootstrap_servers, topics.events, 2)
        assert b"new" in seen
        assert b"after" not in seen, "a fenced producer's records never become visible"


async def test_a_producer_fenced_before_its_first_write_fails_typed(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    # The successor takes the id before the zombie's transaction has a
    # partition: librdkafka's AddPartitions is fenced, a fatal error. The
    # binding raises it inside whichever call drained it and then runs the
    # failure callbacks queued behind it with the exception still set: flush
    # failed with "SystemError: returned NULL without setting an exception"
    # (which crashed the transaction loop instead of stopping it as fenced),
    # and a report lock taken in such a callback was never released (a hang).
    async with same_slot(kafka, new_topic) as (topics, zombie, successor):
        await successor.connect()
        await zombie.begin()
        failures: list[tuple[OutRecord, BaseException]] = []
        written = [record(topics.events, b"after %d" % i, key=b"k") for i in range(20)]
        try:
            for one in written:
                await zombie.write_quiet(one, failures)
            left = await zombie.flush()
        except FencedError:
            pass  # refused as handed over, or out of the flush that drained it
        else:
            assert left == 0
            assert [r for r, _ in failures] == written, "every record is named as failed"
            # purged by librdkafka, not refused: kept for a new transaction,
            # never dead-lettered (the abort below is what says fenced)
            assert all(isinstance(KafkaSink.classify(e), RetryableError) for _, e in failures)
        with pytest.raises(FencedError):
            await zombie.abort()
        with pytest.raises(FencedError):
            await zombie.write_quiet(record(topics.events, b"later", key=b"k"), [])
    seen = await asyncio.to_thread(read_committed, kafka.bootstrap_servers, topics.events, 1)
    assert seen == [], "a fenced producer's records never become visible"


async def test_idempotent_sink_writes(kafka: KafkaService, new_topic: Callable[[str], str]) -> None:
    topics = topics_config(new_topic)
    sink = KafkaSink(kafka_config(kafka.bootstrap_servers, enable_idempotence=True), topics)
    await sink.connect()
    try:
        metadata = await asyncio.wait_for(
            await sink.write(record(topics.events, b"once", key=b"k")), 10
        )
    finally:
        await sink.aclose()
    assert metadata.offset >= 0


# --- write ----------------------------------------------------------------------------


async def test_write_returns_a_future_the_broker_resolves(connected: Connected) -> None:
    sink, events = connected
    future = await sink.write(record(events, b"hello", key=b"task-1", partition=1))
    metadata = await asyncio.wait_for(future, 10)
    assert (metadata.topic, metadata.partition) == (events, 1)
    second = await asyncio.wait_for(
        await sink.write(record(events, b"again", key=b"task-1", partition=1)), 10
    )
    assert second.offset > metadata.offset


async def test_a_served_report_leaves_nothing_behind(connected: Connected) -> None:
    # (the producer forgets a future when its report is served, not from a
    # done callback: a leak here would grow with every record ever written)
    sink, events = connected
    futures = [await sink.write(record(events, b"x", key=b"k")) for _ in range(50)]
    await asyncio.wait_for(asyncio.gather(*futures), 10)
    assert sink._connected()._waiting == set()


async def test_records_land_with_key_headers_and_partition_as_given(
    kafka: KafkaService, connected: Connected
) -> None:
    sink, events = connected
    sent = [
        record(events, b"explicit", key=b"task-a", headers=[("ce_id", b"1")], partition=2),
        record(events, b"explicit-0", key=b"task-a", headers=[("ce_id", b"2")], partition=0),
        record(
            events,
            b"by-key",
            key=b"task-b",
            headers=[("ce_type", b"x"), ("ce_type", b"y"), ("empty", b"")],
        ),
        record(events, None, key=b"task-c", partition=1),  # a tombstone
        record(events, b"no-key", headers=[]),
    ]
    futures = [await sink.write(r) for r in sent]
    acked = await asyncio.wait_for(asyncio.gather(*futures), 10)
    received = await consume(kafka.bootstrap_servers, events, count=len(sent))
    assert len(received) == len(sent)
    by_partition_offset = {(r.partition, r.offset): r for r in received}
    for original, metadata in zip(sent, acked, strict=True):
        got = by_partition_offset[metadata.partition, metadata.offset]
        assert got.value == original.value
        assert got.key == original.key
        assert got.headers == tuple(original.headers)
        if original.partition is not None:
            assert got.partition == original.partition


async def test_records_of_one_key_land_in_the_order_written(
    kafka: KafkaService, connected: Connected
) -> None:
    sink, events = connected
    values = [f"{i:03d}".encode() for i in range(40)]
    futures = [await sink.write(record(events, v, key=b"one-task")) for v in values]
    await asyncio.wait_for(asyncio.gather(*futures), 10)
    received = await consume(kafka.bootstrap_servers, events, count=len(values))
    assert len({r.partition for r in received}) == 1
    assert [r.value for r in sorted(received, key=lambda r: r.offset)] == values


async def test_a_record_over_the_request_limit_is_refused_as_too_large(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    topics = topics_config(new_topic)
    sink = KafkaSink(kafka_config(kafka.bootstrap_servers, max_request_bytes=2048), topics)
    await sink.connect()
    try:
        with pytest.raises(RecordTooLargeError):
            await sink.write(record(topics.events, b"x" * 4096, key=b"k"))
        # The sink goes on: the next record is fine.
        metadata = await asyncio.wait_for(
            await sink.write(record(topics.events, b"small", key=b"k")), 10
        )
        assert metadata.offset >= 0
    finally:
        await sink.aclose()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, RecordTooLargeError),
        (KafkaError._MSG_TIMED_OUT, RequestTimeoutError),
        (KafkaError.REQUEST_TIMED_OUT, RequestTimeoutError),
        (KafkaError.NOT_LEADER_FOR_PARTITION, UnavailableError),
        (KafkaError._TRANSPORT, UnavailableError),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, AuthError),
        (KafkaError.INVALID_RECORD, InvalidDataError),
        (KafkaError.PRODUCER_FENCED, FencedError),
        (KafkaError._FENCED, FencedError),
        (KafkaError._FATAL, FencedError),
    ],
    ids=lambda value: KafkaError(value).name() if isinstance(value, int) else None,
)
def test_classify_maps_client_errors(code: int, expected: type[BridgeError]) -> None:
    classified = KafkaSink.classify(KafkaException(KafkaError(code)))
    assert type(classified) is expected
    assert classified.retryable == issubclass(expected, UnavailableError)


def test_a_transaction_to_redo_is_told_apart_from_a_commit_to_retry() -> None:
    abortable = KafkaError(KafkaError._TIMED_OUT, txn_requires_abort=True)
    retriable = KafkaError(KafkaError._TIMED_OUT, retriable=True)
    assert isinstance(
        KafkaSink._transaction_error(KafkaException(abortable)), TransactionAbortedError
    )
    again = KafkaSink._transaction_error(KafkaException(retriable))
    assert again.retryable and not isinstance(again, TransactionAbortedError)


def test_classify_keeps_a_bridge_error_as_it_is() -> None:
    error = UnavailableError("already ours")
    assert KafkaSink.classify(error) is error


# --- close ----------------------------------------------------------------------------


async def test_aclose_twice_is_safe_and_a_closed_sink_refuses_writes(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    never_connected = KafkaSink(kafka_config(kafka.bootstrap_servers), topics_config(new_topic))
    await never_connected.aclose()
    topics = topics_config(new_topic)
    sink = KafkaSink(kafka_config(kafka.bootstrap_servers), topics)
    await sink.connect()
    pending = await sink.write(record(topics.events, b"flushed by close", key=b"k"))
    await sink.aclose()
    await sink.aclose()
    assert not sink.connected
    assert pending.done() and pending.exception() is None, "aclose flushes what was written"
    with pytest.raises(BridgeError):
        await asyncio.wait_for(sink.write(record(topics.events, b"late")), 10)
    received = await consume(kafka.bootstrap_servers, topics.events, count=1, max_wait=5)
    assert [r.value for r in received] == [b"flushed by close"]


async def test_a_quiet_producer_reports_a_failure_with_its_record_and_nothing_for_a_success(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    # delivery.report.only.error, as transactional producers are configured:
    # the commit reports the successes, only failures come back.
    topic = new_topic("quiet")
    await create_topics(kafka.bootstrap_servers, topic)
    failures: list[tuple[OutRecord, BaseException]] = []
    reached = AsyncProducer(
        {"bootstrap.servers": kafka.bootstrap_servers, "delivery.report.only.error": True}
    )
    unreachable = AsyncProducer(
        {
            "bootstrap.servers": f"127.0.0.1:{nobody_listens()}",
            "delivery.report.only.error": True,
            "message.timeout.ms": 200,
        }
    )
    written, lost = record(topic, b"written"), record(topic, b"lost")
    references = sys.getrefcount(written)
    try:
        await reached.produce_quiet(written, failures)
        await unreachable.produce_quiet(lost, failures)
        assert await reached.flush(10) == 0
        assert await unreachable.flush(10) == 0
        await asyncio.sleep(0.1)  # the failure's report reaches the loop
        assert [failed for failed, _ in failures] == [lost]
        assert isinstance(KafkaSink.classify(failures[0][1]), RequestTimeoutError)
        gc.collect()
        assert sys.getrefcount(written) == references, "a success's callback state is released"
        with pytest.raises(AssertionError):  # a future would never resolve
            await reached.produce(topic, b"v", b"k", [])
    finally:
        await reached.close(5)
        await unreachable.close(1)
