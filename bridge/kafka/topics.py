"""The bridge's topics: created at start-up when missing (``topics.create``),
with the settings each needs (compaction for the state, coordination and
checkpoint topics). Another replica creating them first is fine."""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from bridge.config import CoordinationConfig, KafkaConfig, TopicsConfig
from bridge.errors import ConfigError, UnavailableError
from bridge.kafka.options import client_options

__all__ = ["ensure_topics"]


async def ensure_topics(
    kafka: KafkaConfig, topics: TopicsConfig, coordination: CoordinationConfig | None = None
) -> None:
    """Create the bridge's topics when missing (or only check them)."""
    wanted: dict[str, dict[str, str]] = {topics.events: {}, topics.dlq: {}}
    partitions = dict.fromkeys(wanted, topics.partitions)
    if coordination is not None and coordination.enabled:
        # Co-partitioned: a task's checkpoint sits in the partition index its
        # ownership does. Compacted: the latest record per task id is kept.
        for name in (coordination.tasks_topic, coordination.checkpoints_topic):
            # Small segments and an eager cleaner keep the topic near one
            # record per live task, so loading it on a rebalance stays fast.
            wanted[name] = {
                "cleanup.policy": "compact",
                "segment.ms": "600000",
                "min.cleanable.dirty.ratio": "0.1",
            }
            partitions[name] = coordination.partitions
    if topics.state:
        # Compaction keeps the latest snapshot per task id forever; the delete
        # half lets a tombstone remove a task after the retention.
        wanted[topics.state] = {"cleanup.policy": "compact"}
    for rule in topics.routes:
        if rule.topic:
            wanted.setdefault(rule.topic, {})
    admin = AIOKafkaAdminClient(**client_options(kafka))
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise UnavailableError(f"cannot reach Kafka at {kafka.bootstrap_servers}") from exc
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return
        if not topics.create:
            raise ConfigError(
                f"topics {', '.join(missing)} do not exist and topics.create is false",
                field="topics.create",
            )
        new = [
            NewTopic(
                name,
                num_partitions=partitions.get(name, topics.partitions),
                replication_factor=topics.replication_factor,
                # aiokafka's NewTopic insists on an assignment map when a count
                # is -1 (broker default, KIP-464); an empty map assigns nothing.
                replica_assignments={} if topics.replication_factor == -1 else None,
                topic_configs=wanted[name],
            )
            for name in missing
        ]
        with contextlib.suppress(TopicAlreadyExistsError):  # another replica was first
            await admin.create_topics(new)
    finally:
        await admin.close()
