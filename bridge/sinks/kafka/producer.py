"""The Kafka sink: connect (start the producer, make sure the topics exist,
take the transactional id), write (hand one record to the producer, get a
future for its delivery report), commit or abort a transaction, close (flush,
stop). It never retries on its own account: a failure comes back as a typed
error and the delivery loop decides.

librdkafka keeps records of one partition in order, retries included (the
idempotent producer, on by default), so records of one task (one key, one
partition) reach the broker in the order they were written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException

from bridge.config import CoordinationConfig, KafkaConfig, TopicsConfig
from bridge.core.record import OutRecord
from bridge.errors import (
    BridgeError,
    ConfigError,
    FencedError,
    GroupGenerationError,
    TransactionAbortedError,
    UnavailableError,
)
from bridge.kafka.errors import kafka_error, stale_generation, translate_send_error
from bridge.kafka.producer import AsyncProducer, Delivered, needs_abort
from bridge.kafka.rdkafka import producer_config
from bridge.kafka.topics import ensure_topics

__all__ = ["PARTNER_SUFFIX", "KafkaSink"]

#: the partner producer's transactional id: the sink's own, with this after it
PARTNER_SUFFIX = "#2"

#: what a broker without transactions answers InitProducerId with
_NO_TRANSACTIONS = ("NOT_IMPLEMENTED", "UNSUPPORTED_VERSION", "INVALID_TRANSACTION_TIMEOUT")


class KafkaSink:
    """One producer for every topic the bridge writes; transactional when given
    a ``transactional_id``."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: TopicsConfig,
        coordination: CoordinationConfig | None = None,
        *,
        flow_topics: Sequence[str] = (),
        transactional_id: str | None = None,
        ensure_topics: bool = True,
    ) -> None:
        self._kafka = kafka
        self._topics = topics
        self._coordination = coordination
        #: created with the bridge's own topics (``kafka.topics.flow_topics``)
        self._flow_topics = flow_topics
        self.transactional_id = transactional_id
        #: a partner leaves the topics to the sink it was made from
        self._ensure_topics = ensure_topics
        self._producer: AsyncProducer | None = None
        self._closed = False

    def partner(self) -> KafkaSink:
        """A second transactional producer for the same topics, with the id
        ``<transactional_id>#2``: transactions take turns on the two, the next
        written while the one before commits (``TransactionalDelivery``).
        ``#`` is in no host name, so it cannot be another replica's id."""
        assert self.transactional_id is not None, "only a transactional sink has a partner"
        return KafkaSink(
            self._kafka,
            self._topics,
            self._coordination,
            transactional_id=f"{self.transactional_id}{PARTNER_SUFFIX}",
            ensure_topics=False,
        )

    @property
    def connected(self) -> bool:
        return self._producer is not None and not self._closed

    @property
    def transactional(self) -> bool:
        return self.transactional_id is not None

    @property
    def _timeout_s(self) -> float:
        return self._kafka.request_timeout_ms / 1000

    async def connect(self) -> None:
        """Start the producer, take the transactional id (fencing any earlier
        holder), ensure the topics. Raises ``ConfigError`` for a setting the
        cluster cannot honour, ``UnavailableError`` when unreachable."""
        config = self._kafka
        producer = AsyncProducer(
            producer_config(
                config,
                transactional_id=self.transactional_id,
                transaction_timeout_ms=config.transaction_timeout_ms,
            )
        )
        try:
            await self._reach(producer)
            if self.transactional_id is not None:
                await self._init_transactions(producer)
            if self._ensure_topics:
                await ensure_topics(
                    self._kafka, self._topics, self._coordination, self._flow_topics
                )
        except BaseException:
            await asyncio.shield(producer.close(0))
            raise
        self._producer = producer

    async def _reach(self, producer: AsyncProducer) -> None:
        try:
            await producer.list_topics(self._timeout_s)
        except KafkaException as exc:
            raise UnavailableError(
                f"cannot reach Kafka at {','.join(self._kafka.bootstrap_servers)}: {exc}"
            ) from exc

    async def _init_transactions(self, producer: AsyncProducer) -> None:
        try:
            await producer.init_transactions(self._timeout_s)
        except KafkaException as exc:
            error = kafka_error(exc)
            name = error.name() if error is not None else type(exc).__name__
            if error is not None and (error.retriable() or name.lstrip("_") == "TIMED_OUT"):
                raise UnavailableError(f"Kafka transactions not ready: {name}") from exc
            if any(marker in name for marker in _NO_TRANSACTIONS):
                raise ConfigError(
                    f"kafka.transactions is true but the broker refused a transactional "
                    f"producer ({name}); use a broker with transactions or set "
                    "XPANDER_BRIDGE_KAFKA__TRANSACTIONS=false",
                    field="kafka.transactions",
                ) from exc
            raise translate_send_error(exc) from exc

    def _connected(self) -> AsyncProducer:
        if self._producer is None or self._closed:
            raise UnavailableError("the Kafka sink is not connected")
        return self._producer

    async def write(self, record: OutRecord) -> asyncio.Future[Delivered]:
        """Hand the record to the producer; the future resolves on its delivery
        report. Waits while librdkafka's queue is full: that wait is the
        back-pressure that reaches the streams through the bounded queue."""
        producer = self._connected()
        try:
            return await producer.produce(
                record.topic, record.value, record.key, record.headers, record.partition
            )
        except KafkaException as exc:
            raise translate_send_error(exc) from exc

    async def write_quiet(
        self, record: OutRecord, failures: list[tuple[OutRecord, BaseException]]
    ) -> None:
        """Hand the record to a transactional producer, which reports only
        failures: if this one fails, ``(record, error)`` is appended to
        ``failures`` (``classify`` the error); the commit says the rest were
        written. Waits while librdkafka's queue is full, as ``write``."""
        producer = self._connected()
        try:
            await producer.produce_quiet(record, failures)
        except KafkaException as exc:
            raise translate_send_error(exc) from exc

    async def flush(self) -> int:
        """Until librdkafka has an answer for every record handed over (bounded
        by ``kafka.request_timeout_ms``): the number still without one."""
        try:
            return await self._connected().flush(self._timeout_s)
        except KafkaException as exc:
            raise translate_send_error(exc) from exc

    # --- transactions (only with a transactional id) ------------------------------

    async def begin(self) -> None:
        try:
            await self._connected().begin_transaction()
        except KafkaException as exc:
            raise translate_send_error(exc) from exc

    async def send_offsets(self, offsets: list[Any], group_metadata: Any) -> None:
        """Commit a consumer group's offsets with the open transaction (its
        metadata lets the broker refuse them from a member the group left:
        ``GroupGenerationError``)."""
        try:
            await self._connected().send_offsets_to_transaction(
                offsets, group_metadata, self._timeout_s
            )
        except KafkaException as exc:
            if stale_generation(exc):
                raise GroupGenerationError(str(translate_send_error(exc))) from exc
            raise self._transaction_error(exc) from exc

    async def commit(self) -> None:
        """Commit the open transaction. Raises ``FencedError`` (give up),
        ``TransactionAbortedError`` (abort, then redo the transaction), or another
        bridge error after which the same commit may be tried again."""
        try:
            await self._connected().commit_transaction(self._timeout_s)
        except KafkaException as exc:
            raise self._transaction_error(exc) from exc

    async def abort(self) -> None:
        """Abort the open transaction (its records are never visible to
        read_committed consumers). Raises ``FencedError``, or a bridge error
        after which the abort may be tried again."""
        try:
            await self._connected().abort_transaction(self._timeout_s)
        except KafkaException as exc:
            raise self._transaction_error(exc) from exc

    async def reset(self) -> None:
        """Replace the producer by a new one with the same transactional id: the
        way out when a transaction can be neither committed nor aborted (a
        broker that cannot bump the producer's epoch after a sequence gap leaves
        librdkafka retrying for ever). Whatever the old one held was never
        committed; the new one's InitProducerId aborts it for good."""
        old, self._producer = self._producer, None
        if old is not None:
            await asyncio.shield(old.close(0))
        producer = AsyncProducer(
            producer_config(
                self._kafka,
                transactional_id=self.transactional_id,
                transaction_timeout_ms=self._kafka.transaction_timeout_ms,
            )
        )
        try:
            await self._reach(producer)
            await self._init_transactions(producer)
        except BaseException:
            await asyncio.shield(producer.close(0))
            raise
        self._producer = producer

    @staticmethod
    def _transaction_error(exc: KafkaException) -> BridgeError:
        error = translate_send_error(exc)
        if needs_abort(exc) and not isinstance(error, FencedError):
            return TransactionAbortedError(str(error))
        return error

    @staticmethod
    def classify(error: BaseException) -> BridgeError:
        """A failed delivery report, as the bridge error the runner acts on."""
        return translate_send_error(error)

    async def aclose(self) -> None:
        if self._producer is not None and not self._closed:
            self._closed = True
            await self._producer.close(self._timeout_s)
