"""The Kafka sink: connect (start the producer, make sure the topics exist),
write (hand one record to the producer, get a future for the broker's ack),
close (flush, stop). It never retries on its own account: a failed send comes
back as a typed error and the delivery loop decides.

aiokafka keeps one batch in flight per partition, so records of one task
(one key, one partition) reach the broker in the order they were sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from bridge.config import CoordinationConfig, KafkaConfig, TopicsConfig
from bridge.core.record import OutRecord
from bridge.errors import BridgeError, ConfigError, UnavailableError
from bridge.kafka.errors import translate_send_error
from bridge.kafka.options import client_options
from bridge.kafka.topics import ensure_topics

__all__ = ["KafkaSink"]


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

    @staticmethod
    def classify(error: BaseException) -> BridgeError:
        """A failed delivery future's error, as the bridge error the runner acts on."""
        return translate_send_error(error)

    async def aclose(self) -> None:
        if self._producer is not None and not self._closed:
            self._closed = True
            await self._producer.stop()
