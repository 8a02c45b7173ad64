"""Per-task checkpoints, kept in a compacted topic keyed by task id.

A checkpoint records how far a task's events are *safely in Kafka*: the last
sequence of an unbroken run of acknowledged envelopes, with the SSE id, the
``event_id`` and the status of that envelope, and the first event's id (which
tells a server that replays from the start apart from one that does not). It
is written only after everything up to it was acknowledged, so resuming from
it never skips an event; at worst it repeats the few after it, with the same
``event_id``.

The checkpoints topic has as many partitions as the coordination topic and
each checkpoint is written to ``partition_for(task_id)``: the replica that owns
partition *p* of one reads partition *p* of the other to resume its tasks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bridge.config import KafkaConfig
from bridge.errors import UnavailableError
from bridge.sinks.kafka.producer import client_options

__all__ = ["Checkpoint", "load_checkpoints"]

_VERSION = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    task_id: str
    agent_id: str | None
    organization_id: str | None
    #: the last sequence such that it and every one before it is in Kafka
    sequence: int
    #: the SSE id of the stream's last acknowledged event that carried one
    last_sse_id: str | None
    #: ``event_id`` of the envelope at ``sequence``
    last_event_id: str | None
    #: ``event_id`` of the last acknowledged envelope read from the stream: where
    #: a server that replays from the start is caught up
    last_stream_event_id: str | None
    #: ``event_id`` of the task's first streamed event: a replay starts with it
    first_event_id: str | None
    status: str | None
    #: the task's ``task_finished`` is in Kafka
    finished: bool
    #: wall-clock seconds of the write, for the retention of finished tasks
    written_at: float

    def encode(self) -> bytes:
        # Written out, not dataclasses.asdict: this runs for every task with
        # progress each interval, and asdict was most of its cost.
        return orjson.dumps(
            {
                "v": _VERSION,
                "task_id": self.task_id,
                "agent_id": self.agent_id,
                "organization_id": self.organization_id,
                "sequence": self.sequence,
                "last_sse_id": self.last_sse_id,
                "last_event_id": self.last_event_id,
                "last_stream_event_id": self.last_stream_event_id,
                "first_event_id": self.first_event_id,
                "status": self.status,
                "finished": self.finished,
                "written_at": self.written_at,
            }
        )

    @classmethod
    def decode(cls, value: bytes) -> Checkpoint | None:
        """``None`` for a value this version cannot read (skipped, never fatal)."""
        try:
            data: Any = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or data.get("v") != _VERSION:
            return None
        try:
            return cls(
                task_id=str(data["task_id"]),
                agent_id=data.get("agent_id"),
                organization_id=data.get("organization_id"),
                sequence=int(data["sequence"]),
                last_sse_id=data.get("last_sse_id"),
                last_event_id=data.get("last_event_id"),
                last_stream_event_id=data.get("last_stream_event_id"),
                first_event_id=data.get("first_event_id"),
                status=data.get("status"),
                finished=bool(data.get("finished")),
                written_at=float(data.get("written_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError):
            return None


def now() -> float:
    return time.time()


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
