"""Per-task checkpoints (``bridge.core.checkpoint``), kept in a compacted topic
keyed by task id, and read back here when partitions are assigned.

The checkpoints topic has as many partitions as the coordination topic and
each checkpoint is written to ``partition_for(task_id)``: the replica that owns
partition *p* of one reads partition *p* of the other to resume its tasks.

Read committed, to the last stable offset: a checkpoint in a transaction that
is still open (its replica died mid-transaction) or was aborted covers
envelopes no consumer will ever see, so it is not a place to resume from.
"""

from __future__ import annotations

import asyncio
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from bridge.config import KafkaConfig
from bridge.core.checkpoint import Checkpoint
from bridge.errors import UnavailableError
from bridge.kafka.rdkafka import consumer_config

__all__ = ["load_checkpoints"]


async def load_checkpoints(
    kafka: KafkaConfig, topic: str, partitions: list[int], *, timeout_s: float = 30.0
) -> dict[str, Checkpoint]:
    """Read the given partitions of the checkpoints topic to their (stable) end."""
    if not partitions:
        return {}
    return await asyncio.to_thread(_load, kafka, topic, partitions, timeout_s)


def _load(
    kafka: KafkaConfig, topic: str, partitions: list[int], timeout_s: float
) -> dict[str, Checkpoint]:
    options = consumer_config(kafka, read_committed=True)
    # The end of a partition, for a read_committed consumer, is its last
    # stable offset; librdkafka says so with one EOF event per partition.
    options["enable.partition.eof"] = True
    # Reading to the end, not waiting for news: the broker's default long
    # poll held every assignment's start-up for nothing when a partition was empty.
    options["fetch.wait.max.ms"] = 20
    consumer = Consumer(options)
    found: dict[str, Checkpoint] = {}
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending = set(partitions)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise UnavailableError(
                    f"checkpoints of partitions {sorted(pending)} not read within {timeout_s}s"
                )
            for message in consumer.consume(5000, 0.1):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(message.partition() or 0)
                        continue
                    raise UnavailableError(f"reading checkpoints: {error.name()}")
                key = (message.key() or b"").decode("utf-8", "replace")
                value = message.value()
                if value is None:
                    found.pop(key, None)  # tombstone
                    continue
                checkpoint = Checkpoint.decode(value)
                if checkpoint is not None:
                    found[checkpoint.task_id] = checkpoint
    except KafkaException as exc:
        raise UnavailableError(f"reading checkpoints: {exc}") from exc
    finally:
        consumer.close()
    return found
