"""The Kafka sink against a real broker: topics on connect, writes acknowledged
by the broker and read back as written, errors as bridge errors."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
)
from aiokafka.errors import RecordTooLargeError as AiokafkaRecordTooLarge
from support.kafka import KafkaService, consume

from bridge.config import CoordinationConfig, KafkaConfig, RouteRule, TopicsConfig
from bridge.core.record import OutRecord
from bridge.errors import (
    BridgeError,
    ConfigError,
    RecordTooLargeError,
    RequestTimeoutError,
    UnavailableError,
)
from bridge.kafka.embedded import EmbeddedBroker
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


async def described(bootstrap_servers: str, names: list[str]) -> dict[str, tuple[int, str | None]]:
    """Per topic: its partition count and its ``cleanup.policy`` (``None`` when unset)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        partitions = {
            t["topic"]: len(t["partitions"])
            for t in await admin.describe_topics(names)
            if t["error_code"] == 0
        }
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    policies: dict[str, str | None] = dict.fromkeys(names)
    for response in responses:
        for error_code, _, _, name, entries in response.resources:
            assert error_code == 0, name
            for entry in entries:
                if entry[0] == "cleanup.policy":
                    policies[name] = entry[1]
    return {name: (partitions.get(name, 0), policies[name]) for name in names}


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


async def test_connect_to_an_unreachable_address_raises_unavailable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
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


@pytest.fixture
async def tansu_bootstrap(kafka: KafkaService) -> AsyncIterator[str]:
    """A broker without InitProducerId for aiokafka: the session's when it is tansu."""
    if kafka.broker == "tansu":
        yield kafka.bootstrap_servers
        return
    async with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


async def test_idempotence_on_a_broker_without_it_is_a_config_error(
    tansu_bootstrap: str, new_topic: Callable[[str], str]
) -> None:
    sink = KafkaSink(
        kafka_config(tansu_bootstrap, enable_idempotence=True), topics_config(new_topic)
    )
    with pytest.raises(ConfigError) as raised:
        await sink.connect()
    assert raised.value.field == "kafka.enable_idempotence"
    assert "kafka.enable_idempotence" in str(raised.value)
    assert "ENABLE_IDEMPOTENCE=false" in str(raised.value), "says how to fix it"
    assert not sink.connected


@pytest.mark.requires_kafka("idempotence")
async def test_idempotent_sink_writes_on_a_broker_with_it(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
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
    ("error", "expected"),
    [
        (MessageSizeTooLargeError(), RecordTooLargeError),
        (AiokafkaRecordTooLarge(), RecordTooLargeError),
        (KafkaTimeoutError(), RequestTimeoutError),
        (NotLeaderForPartitionError(), UnavailableError),
        (RequestTimedOutError(), UnavailableError),
        (KafkaConnectionError("gone"), UnavailableError),
        (ConnectionResetError("reset"), UnavailableError),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_classify_maps_client_errors(error: BaseException, expected: type[BridgeError]) -> None:
    classified = KafkaSink.classify(error)
    assert type(classified) is expected
    # The delivery loop retries what is retryable and gives up only on "too large".
    assert classified.retryable == (expected is not RecordTooLargeError)


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
