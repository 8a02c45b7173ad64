"""``partition_for`` is Kafka's default partitioner: the vectors were taken from
aiokafka's murmur2 (the function the bridge used before, itself checked
against Java's ``Utils.murmur2``), so no task's partition moves on upgrade; and
librdkafka's producer (``murmur2_random``) puts a keyed record exactly there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from confluent_kafka import Message, Producer
from support.kafka import KafkaService, create_topics

from bridge.coordination.partitioning import murmur2, partition_for

VECTORS = {
    "": 275646681,
    "a": 2731586172,
    "ab": 316155434,
    "abc": 479470107,
    "abcd": 2971317748,
    "abcde": 461995741,
    "21": 3321034988,
    "task-1": 2904037779,
    "0b6f3c2e-93e4-4d0b-9f0c-2b8a7e6f1d00": 2258768207,
    "ünïcödé-タスク": 1239958560,
    "x" * 257: 3355833842,
}


@pytest.mark.parametrize(("key", "expected"), VECTORS.items(), ids=lambda v: str(v)[:12])
def test_murmur2_matches_the_java_client(key: str, expected: int) -> None:
    assert murmur2(key.encode()) == expected


@pytest.mark.timeout(60)
async def test_librdkafka_puts_each_key_where_partition_for_says(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    topic = new_topic("partitioned")
    await create_topics(kafka.bootstrap_servers, topic, partitions=7)
    keys = [f"task-{i}" for i in range(60)] + [k for k in VECTORS if k]
    landed: dict[str, int] = {}

    def produce() -> None:
        producer = Producer(
            {"bootstrap.servers": kafka.bootstrap_servers, "partitioner": "murmur2_random"}
        )
        for key in keys:

            def delivered(error: object, message: Message, key: str = key) -> None:
                assert error is None, error
                landed[key] = message.partition() or 0

            producer.produce(topic, b"v", key.encode(), on_delivery=delivered)
        assert producer.flush(20) == 0

    await asyncio.to_thread(produce)
    assert landed == {key: partition_for(key, 7) for key in keys}
