"""The dead-letter sink of the Kafka-to-platform direction: what a DLQ record
carries, that ``write`` waits for Kafka's ack, and the whole way through a real
broker (consumed message -> DLQ record -> read back)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
from support.kafka import KafkaService, OutRecord, consume, create_topics, produce
from support.publishing import RecordingPublish
from support.waiting import eventually

from bridge.config import KafkaConfig, TopicsConfig
from bridge.core.dead_letter import MAX_ERROR_CHARS
from bridge.core.message import InMessage
from bridge.core.record import OutRecord as Record
from bridge.observability.metrics import DeadLetterReason, Metrics
from bridge.pipeline.delivery import DeliveryLoop
from bridge.pipeline.queue import RecordQueue
from bridge.sinks.kafka.dead_letters import DeadLetterSink
from bridge.sinks.kafka.producer import KafkaSink

pytestmark = pytest.mark.timeout(60)

DLQ = "the-dlq"
#: not UTF-8, not JSON: the DLQ must carry it byte for byte
RAW = b"\xff\xfe{not json\x00"
ORIGINAL_HEADERS = [("traceparent", b"00-abc-01"), ("dup", b"1"), ("dup", b"2"), ("empty", b"")]


def message(
    value: bytes | None = RAW,
    key: bytes | None = b"agent-7",
    headers: list[tuple[str, bytes]] | None = None,
) -> InMessage:
    return InMessage(
        topic="reports",
        partition=3,
        offset=1234,
        key=key,
        value=value,
        headers=ORIGINAL_HEADERS if headers is None else headers,
        timestamp=1_700_000_000_000,
    )


def header_names(record: Record) -> list[str]:
    return [name for name, _ in record.headers]


def header(record: Record, name: str) -> bytes | None:
    found = [value for key, value in record.headers if key == name]
    assert len(found) <= 1, f"{name} appears {len(found)} times"
    return found[0] if found else None


async def test_the_dlq_record_keeps_the_original_and_says_why() -> None:
    publish = RecordingPublish()
    await DeadLetterSink(DLQ, publish).write(
        message(), DeadLetterReason.INVALID_REPORT, "not JSON: unexpected character", None
    )
    (record,) = publish.records
    assert record.topic == DLQ
    assert record.value == RAW
    assert record.key == b"agent-7"
    assert record.dead_letter_reason is DeadLetterReason.INVALID_REPORT  # the metric label
    assert header(record, "dlq.reason") == b"invalid_report"
    assert header(record, "dlq.error") == b"not JSON: unexpected character"
    assert header(record, "dlq.source") == b"kafka"
    assert header(record, "dlq.original_topic") == b"reports"
    assert header(record, "dlq.original_partition") == b"3"
    assert header(record, "dlq.original_offset") == b"1234"
    assert header(record, "dlq.status") is None, "no HTTP status: none was given"
    # The original headers follow the dlq.* ones, all of them, in order.
    dlq_headers = [h for h in record.headers if h[0].startswith("dlq.")]
    assert record.headers == [*dlq_headers, *ORIGINAL_HEADERS]


async def test_a_platform_refusal_carries_the_status_and_a_bounded_error() -> None:
    publish = RecordingPublish()
    long_error = "report_task: HTTP 422 " + "x" * 5000
    await DeadLetterSink(DLQ, publish).write(
        message(headers=[]), DeadLetterReason.PLATFORM_REJECTED, long_error, 422
    )
    (record,) = publish.records
    assert header(record, "dlq.reason") == b"platform_rejected"
    assert header(record, "dlq.status") == b"422"
    error = header(record, "dlq.error") or b""
    assert error.startswith(b"report_task: HTTP 422")
    assert len(error) <= MAX_ERROR_CHARS
    assert all(name.startswith("dlq.") for name in header_names(record))


async def test_write_returns_only_after_kafka_acknowledged() -> None:
    publish = RecordingPublish(hold=True)
    sink = DeadLetterSink(DLQ, publish)
    writing = asyncio.create_task(
        sink.write(message(), DeadLetterReason.INVALID_REPORT, "bad", None)
    )
    await eventually(lambda: len(publish.records) == 1, timeout_s=5, what="the record handed over")
    for _ in range(20):  # every step the write could take without the ack
        await asyncio.sleep(0)
    assert not writing.done(), "returned before the DLQ record was acknowledged"
    publish.ack()
    await asyncio.wait_for(writing, 5)


async def test_a_write_cancelled_before_the_ack_does_not_return_normally() -> None:
    # A shutdown while the DLQ record is in flight: the source must not see
    # the message as done (it would commit past a record Kafka may not have).
    publish = RecordingPublish(hold=True)
    writing = asyncio.create_task(
        DeadLetterSink(DLQ, publish).write(message(), DeadLetterReason.INVALID_REPORT, "x", None)
    )
    await eventually(lambda: len(publish.records) == 1, timeout_s=5, what="the record handed over")
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing


async def first_message(bootstrap_servers: str, topic: str) -> InMessage:
    (record,) = await consume(bootstrap_servers, topic, count=1)
    return InMessage(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        list(record.headers),
        record.timestamp,
    )


async def test_a_consumed_message_reaches_the_dlq_topic_intact(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    source, dlq = new_topic("reports"), new_topic("dlq")
    await create_topics(kafka.bootstrap_servers, source)
    await produce(
        kafka.bootstrap_servers, source, [OutRecord(RAW, key=b"agent-7", headers=ORIGINAL_HEADERS)]
    )
    original = await first_message(kafka.bootstrap_servers, source)

    kafka_sink = KafkaSink(
        KafkaConfig(
            bootstrap_servers=kafka.bootstrap_servers.split(","),
            linger_ms=2,
        ),
        TopicsConfig(events=new_topic("events"), state=new_topic("state"), dlq=dlq, partitions=1),
    )
    await kafka_sink.connect()
    metrics = Metrics()
    queue = RecordQueue(100, 1_000_000)
    delivery = DeliveryLoop(queue, kafka_sink, metrics)
    runner = asyncio.create_task(delivery.run())

    async def publish(records: list[Record]) -> None:
        for record in records:
            await queue.put(record)

    try:
        await asyncio.wait_for(
            DeadLetterSink(dlq, publish).write(
                original, DeadLetterReason.PLATFORM_REJECTED, "HTTP 400", 400
            ),
            20,
        )
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await kafka_sink.aclose()
    # write returned: the broker has it, and the delivery loop counted it.
    assert (
        metrics.registry.get_sample_value(
            "xpander_bridge_dead_letters_total", {"reason": "platform_rejected"}
        )
        == 1
    )
    (dead,) = await consume(kafka.bootstrap_servers, dlq, count=1, max_wait=10)
    assert dead.value == RAW
    assert dead.key == b"agent-7"
    assert dead.header("dlq.reason") == b"platform_rejected"
    assert dead.header("dlq.status") == b"400"
    assert dead.header("dlq.original_topic") == source.encode()
    assert dead.header("dlq.original_partition") == b"0"
    assert dead.header("dlq.original_offset") == str(original.offset).encode()
    assert dead.headers[-len(ORIGINAL_HEADERS) :] == tuple(ORIGINAL_HEADERS)
