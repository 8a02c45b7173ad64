"""Which partition a task id belongs to: Kafka's default partitioner (murmur2 of
the key), so a Java, Go or Python client keying by task id agrees with us."""

from __future__ import annotations

from aiokafka.partitioner import murmur2

__all__ = ["partition_for"]


def partition_for(task_id: str, partitions: int) -> int:
    hashed: int = murmur2(task_id.encode())
    return (hashed & 0x7FFFFFFF) % partitions
