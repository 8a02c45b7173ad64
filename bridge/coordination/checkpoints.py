"""Per-task checkpoints (``bridge.core.checkpoint``), kept in a compacted topic
keyed by task id, and read back here when partitions are assigned.

The checkpoints topic has as many partitions as the coordination topic and
each checkpoint is written to ``partition_for(task_id)``: the replica that owns
partition *p* of one reads partition *p* of the other to resume its tasks.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from bridge.config import KafkaConfig
from bridge.core.checkpoint import Checkpoint
from bridge.errors import UnavailableError
from bridge.kafka.options import client_options

__all__ = ["load_checkpoints"]


async def load_checkpoints(
    kafka: KafkaConfig, topic: str, partitions: list[int], *, timeout_s: float = 30.0
) -> dict[str, Checkpoint]:
    """Read the given partitions of the checkpoints topic to their end.

    The end is the high watermark the fetch responses report (``end_offsets``
    is not trusted: some Kafka-compatible brokers answer it wrongly).
    """
    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(
        **client_options(kafka),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Reading to the end, not waiting for news: the broker's default long
        # poll (500 ms) held every assignment's start-up for nothing when a
        # partition was empty.
        fetch_max_wait_ms=20,
    )
    found: dict[str, Checkpoint] = {}
    try:
        await consumer.start()
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pending = set(assigned)
        while pending:
            if loop.time() > deadline:
                raise UnavailableError(
                    f"checkpoints of partitions {sorted(tp.partition for tp in pending)} "
                    f"not read within {timeout_s}s"
                )
            batch = await consumer.getmany(timeout_ms=50, max_records=5000)
            for records in batch.values():
                for record in records:
                    key = (record.key or b"").decode("utf-8", "replace")
                    if record.value is None:
                        found.pop(key, None)  # tombstone
                        continue
                    checkpoint = Checkpoint.decode(record.value)
                    if checkpoint is not None:
                        found[checkpoint.task_id] = checkpoint
            for tp in list(pending):
                # Known only once a fetch answered for the partition: until
                # then, an empty answer does not mean "nothing there".
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    pending.discard(tp)
    finally:
        await asyncio.shield(consumer.stop())
    return found
