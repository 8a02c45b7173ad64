"""The bridge's topics: created at start-up when missing (``topics.create``),
with the settings each needs (compaction for the state, coordination and
checkpoint topics). Another replica creating them first is fine. The topics
of the enabled Kafka-to-platform flows (``flow_topics``: reports and metrics,
task commands and their replies) are created too, so that the first message
and the first reply have somewhere to go: a consumer subscribed to a missing
topic only warns and waits. A kafka_replyTopic allowed by
``commands.reply_topics`` is the requester's, and is not created."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bridge.config import BridgeConfig, CoordinationConfig, KafkaConfig, TopicsConfig
from bridge.errors import ConfigError, UnavailableError
from bridge.kafka.rdkafka import client_config

__all__ = ["ensure_topics", "flow_topics"]


def flow_topics(config: BridgeConfig) -> list[str]:
    """The topics the enabled Kafka-to-platform flows read and write."""
    names: list[str] = []
    if config.reports.enabled:
        names += [config.reports.reports_topic, config.reports.metrics_topic]
    if config.commands.enabled:
        names += [config.commands.commands_topic, config.commands.results_topic]
    return names


async def ensure_topics(
    kafka: KafkaConfig,
    topics: TopicsConfig,
    coordination: CoordinationConfig | None = None,
    flows: Sequence[str] = (),
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
    if topics.activity:
        wanted[topics.activity] = {}
    if topics.state:
        # Compaction keeps the latest snapshot per task id forever; the delete
        # half lets a tombstone remove a task after the retention.
        wanted[topics.state] = {"cleanup.policy": "compact"}
    for rule in topics.routes:
        if rule.topic:
            wanted.setdefault(rule.topic, {})
    for name in flows:
        wanted.setdefault(name, {})
    await asyncio.to_thread(_create_missing, kafka, topics, wanted, partitions)


def _create_missing(
    kafka: KafkaConfig,
    topics: TopicsConfig,
    wanted: dict[str, dict[str, str]],
    partitions: dict[str, int],
) -> None:
    admin = AdminClient(client_config(kafka))
    timeout_s = kafka.request_timeout_ms / 1000
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise UnavailableError(
            f"cannot reach Kafka at {','.join(kafka.bootstrap_servers)}: {exc}"
        ) from exc
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
            replication_factor=topics.replication_factor,  # -1: the broker's default
            config=wanted[name],
        )
        for name in missing
    ]
    for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another replica was first
            raise UnavailableError(f"creating topic {name}: {exc}") from exc
