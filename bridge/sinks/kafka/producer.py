"""The Kafka sink: connect (start the producer, make sure the topics exist),
write (hand one record to the producer, get a future for the broker's ack),
close (flush, stop). It never retries on its own account: a failed send comes
back as a typed error and the delivery loop decides.

aiokafka keeps one batch in flight per partition, so records of one task
(one key, one partition) reach the broker in the order they were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
)
from aiokafka.helpers import create_ssl_context

from bridge.config import CoordinationConfig, KafkaConfig, TopicsConfig
from bridge.errors import ConfigError, RequestTimeoutError, UnavailableError
from bridge.errors import RecordTooLargeError as RecordTooLarge
from bridge.pipeline.record import OutRecord

__all__ = ["KafkaSink", "client_options", "translate_send_error"]


def client_options(config: KafkaConfig) -> dict[str, Any]:
    """Connection options shared by producers, consumers and admin clients."""
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
        "request_timeout_ms": config.request_timeout_ms,
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(config)
    if config.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = config.sasl_mechanism
        options["sasl_plain_username"] = config.sasl_username
        if config.sasl_password is not None:
            options["sasl_plain_password"] = config.sasl_password.get_secret_value()
    return options


def _ssl_context(config: KafkaConfig) -> ssl.SSLContext:
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(config.ssl_cafile) if config.ssl_cafile else None,
        certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
        keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None,
    )
    return context


def translate_send_error(exc: BaseException) -> Exception:
    """aiokafka's failures as bridge errors: too large is permanent, the rest retryable."""
    if isinstance(exc, MessageSizeTooLargeError | RecordTooLargeError):
        return RecordTooLarge(f"record over the broker's size limit: {exc}")
    if isinstance(exc, KafkaTimeoutError):
        return RequestTimeoutError("Kafka did not acknowledge in time")
    if isinstance(exc, KafkaError):
        return UnavailableError(f"Kafka send failed: {type(exc).__name__}")
    return UnavailableError(f"Kafka send failed: {type(exc).__name__}: {exc}")


class KafkaSink:
    """One producer for every topic the bridge writes."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: TopicsConfig,
        coordination: CoordinationConfig | None = None,
    ) -> None:
        self._kafka = kafka
        self._topics = topics
        self._coordination = coordination
        self._producer: AIOKafkaProducer | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._producer is not None and not self._closed

    async def connect(self) -> None:
        """Start the producer and ensure the topics. Raises ``ConfigError`` for a
        setting the cluster cannot honour, ``UnavailableError`` when unreachable."""
        config = self._kafka
        producer = AIOKafkaProducer(
            **client_options(config),
            acks="all" if config.acks == "all" else int(config.acks),
            enable_idempotence=config.enable_idempotence,
            compression_type=None if config.compression_type == "none" else config.compression_type,
            linger_ms=config.linger_ms,
            max_batch_size=config.max_batch_bytes,
            max_request_size=config.max_request_bytes,
        )
        try:
            await producer.start()
        except KafkaConnectionError as exc:
            await producer.stop()
            raise UnavailableError(f"cannot reach Kafka at {config.bootstrap_servers}") from exc
        except KafkaError as exc:
            await producer.stop()
            if config.enable_idempotence:
                raise ConfigError(
                    "kafka.enable_idempotence is true but the broker refused an idempotent "
                    f"producer ({type(exc).__name__}); use a broker that supports it or set "
                    "XPANDER_BRIDGE_KAFKA__ENABLE_IDEMPOTENCE=false",
                    field="kafka.enable_idempotence",
                ) from exc
            raise UnavailableError(f"Kafka producer failed to start: {exc}") from exc
        self._producer = producer
        try:
            await ensure_topics(self._kafka, self._topics, self._coordination)
        except BaseException:
            await producer.stop()
            self._producer = None
            raise

    async def write(self, record: OutRecord) -> asyncio.Future[Any]:
        """Hand the record to the producer; the future resolves on the broker's ack.

        Waits while the producer's buffer is full: that wait is the back-pressure
        that reaches the streams through the bounded queue.
        """
        if self._producer is None:
            raise UnavailableError("the Kafka sink is not connected")
        try:
            future: asyncio.Future[Any] = await self._producer.send(
                record.topic,
                value=record.value,
                key=record.key,
                headers=record.headers,
                partition=record.partition,
            )
        except (KafkaError, KafkaTimeoutError) as exc:
            raise translate_send_error(exc) from exc
        return future

    async def flush(self) -> None:
        if self._producer is not None:
            await self._producer.flush()

    async def aclose(self) -> None:
        if self._producer is not None and not self._closed:
            self._closed = True
            await self._producer.stop()


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
