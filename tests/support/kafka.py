"""The Kafka the tests run against, and small async helpers to use it.

Which Kafka (first that applies):

1. ``KAFKA_BOOTSTRAP_SERVERS`` is set: that cluster (kind ``env``). It is
   taken to be Apache Kafka unless ``KAFKA_BROKER_FLAVOR=tansu`` says otherwise.
2. A Docker engine answers ``docker info`` within three seconds: Apache Kafka in a
   container via testcontainers (kind ``apache-kafka-testcontainers``; image
   from ``KAFKA_TEST_IMAGE``).
3. Otherwise the embedded tansu broker (kind ``embedded-tansu``).

``XPANDER_TEST_KAFKA=embedded`` or ``=docker`` skips the discovery of step 2.

The capability flags on :class:`KafkaService` record where tansu differs from
Apache Kafka (see ``docs/notes/tansu.md``); a test that needs one asks for it
with ``@pytest.mark.requires_kafka("idempotence")`` and is skipped with the
reason, never run against a broker that would fake it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import RecordMetadata

from bridge.kafka.embedded import EmbeddedBroker

from .tcp_proxy import TcpProxy

__all__ = [
    "CAPABILITIES",
    "ConsumedRecord",
    "KafkaKind",
    "KafkaOutage",
    "KafkaService",
    "OutRecord",
    "consume",
    "create_topics",
    "docker_engine_available",
    "kafka_service",
    "produce",
    "tansu_service",
    "topic_name",
]

KafkaKind = Literal["env", "apache-kafka-testcontainers", "embedded-tansu"]

DEFAULT_KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
# create_topics() and produce() give up after this long: a test that hangs on
# Kafka fails in seconds with a TimeoutError rather than at pytest-timeout.
_DEADLINE = 10.0


@dataclass(frozen=True)
class KafkaService:
    """A running Kafka the tests may use, and what it can do."""

    bootstrap_servers: str
    kind: KafkaKind
    #: Which implementation answers: the capability flags below follow from it.
    broker: Literal["apache-kafka", "tansu"] = "apache-kafka"
    #: ``enable_idempotence=True`` producers work (tansu: aiokafka's InitProducerId fails).
    supports_idempotence: bool = True
    #: Transactional producers work (tansu: same InitProducerId failure).
    supports_transactions: bool = True
    #: ``cleanup.policy=compact`` / ``retention.ms`` are acted on, not only stored.
    supports_compaction: bool = True
    #: The broker rejects records over ``message.max.bytes`` / topic ``max.message.bytes``.
    enforces_max_message_bytes: bool = True
    #: AlterConfigs and CreatePartitions are implemented.
    supports_alter_topics: bool = True
    #: ListOffsets(latest) is the high watermark (tansu: last batch's base offset + 1).
    accurate_end_offsets: bool = True
    #: Producing to a missing topic fails (tansu: it is acknowledged and discarded).
    rejects_produce_to_missing_topic: bool = True
    #: Consumer settings for a fast group join on this broker: tansu waits
    #: session_timeout/2 before the first assignment; Kafka refuses sessions under 6 s.
    group_settings: Mapping[str, int] = field(
        default_factory=lambda: {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}
    )

    @property
    def is_apache_kafka(self) -> bool:
        return self.broker == "apache-kafka"

    def lacks(self, capability: str) -> str | None:
        """Why this broker cannot run a test needing *capability*, or ``None`` if it can."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown Kafka capability {capability!r}; known: {CAPABILITIES}")
        if capability == "apache_kafka":
            ok = self.is_apache_kafka
        else:
            ok = getattr(self, CAPABILITIES[capability])
        if ok:
            return None
        return (
            f"needs a broker with {capability!r}; this run uses {self.kind} "
            f"({self.bootstrap_servers}). Set KAFKA_BOOTSTRAP_SERVERS to an Apache Kafka "
            "or run a Docker engine for testcontainers."
        )


#: Names for ``@pytest.mark.requires_kafka(...)`` and the flag each reads.
CAPABILITIES: dict[str, str] = {
    "apache_kafka": "is_apache_kafka",
    "idempotence": "supports_idempotence",
    "transactions": "supports_transactions",
    "compaction": "supports_compaction",
    "max_message_bytes": "enforces_max_message_bytes",
    "alter_topics": "supports_alter_topics",
    "accurate_end_offsets": "accurate_end_offsets",
    "rejects_produce_to_missing_topic": "rejects_produce_to_missing_topic",
}


def tansu_service(bootstrap_servers: str, kind: KafkaKind) -> KafkaService:
    """Capabilities of tansu 0.6.0 with aiokafka, as probed in docs/notes/tansu.md."""
    return KafkaService(
        bootstrap_servers=bootstrap_servers,
        kind=kind,
        broker="tansu",
        supports_idempotence=False,
        supports_transactions=False,
        supports_compaction=False,
        enforces_max_message_bytes=False,
        supports_alter_topics=False,
        accurate_end_offsets=False,
        rejects_produce_to_missing_topic=False,
        group_settings={"session_timeout_ms": 2000, "heartbeat_interval_ms": 200},
    )


assert set(CAPABILITIES.values()) - {"is_apache_kafka"} <= {f.name for f in fields(KafkaService)}


class KafkaOutage(NamedTuple):
    """What the ``kafka_outage`` fixture yields: ``bootstrap_servers`` reach the broker
    only through ``proxy``, so ``proxy.pause()`` is "the broker is down"."""

    bootstrap_servers: str
    proxy: TcpProxy


# -- discovery --------------------------------------------------------------------


def docker_engine_available(timeout: float = 3.0) -> bool:
    """True when ``docker info`` reaches an engine within *timeout*; never raises.

    The CLI rather than the docker SDK's ping: the SDK leaks its socket when
    the engine is absent, and warnings are errors in this suite. Without the
    CLI, ``XPANDER_TEST_KAFKA=docker`` still lets testcontainers try the SDK.
    """
    cli = shutil.which("docker")
    if cli is None:
        return False
    try:
        result = subprocess.run(
            [cli, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


@contextmanager
def kafka_service() -> Iterator[KafkaService]:
    """Provide the Kafka for this test session (see the module docstring for the order)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        if os.environ.get("KAFKA_BROKER_FLAVOR", "apache").lower() == "tansu":
            yield tansu_service(external, "env")
        else:
            yield KafkaService(bootstrap_servers=external, kind="env")
        return
    choice = os.environ.get("XPANDER_TEST_KAFKA", "auto").lower()
    if choice == "docker" or (choice == "auto" and docker_engine_available()):
        with _apache_kafka_container() as bootstrap_servers:
            yield KafkaService(
                bootstrap_servers=bootstrap_servers, kind="apache-kafka-testcontainers"
            )
        return
    with EmbeddedBroker() as broker:
        yield tansu_service(broker.bootstrap_servers, "embedded-tansu")


@contextmanager
def _apache_kafka_container() -> Iterator[str]:
    from testcontainers.community.kafka import KafkaContainer

    image = os.environ.get("KAFKA_TEST_IMAGE", DEFAULT_KAFKA_IMAGE)
    container = None
    try:
        container = KafkaContainer(image).with_kraft()
        container.start(timeout=90)
    except Exception as exc:
        if container is not None:
            container.stop()
        raise RuntimeError(
            f"Apache Kafka ({image}) did not start in Docker: {exc}. "
            "Set XPANDER_TEST_KAFKA=embedded to use the embedded broker instead."
        ) from exc
    try:
        yield str(container.get_bootstrap_server())
    finally:
        container.stop()


# -- topics -------------------------------------------------------------------------

_NOT_TOPIC_CHARS = re.compile(r"[^a-zA-Z0-9._-]+")


def topic_name(hint: str = "t") -> str:
    """A topic name no other test (or earlier run against the same cluster) uses."""
    stem = _NOT_TOPIC_CHARS.sub("-", hint).strip("-.")[:80] or "t"
    return f"{stem}-{uuid.uuid4().hex[:10]}"


async def create_topics(
    bootstrap_servers: str,
    *names: str,
    partitions: int = 1,
    configs: Mapping[str, str] | None = None,
) -> None:
    """Create topics and wait until metadata lists all their partitions with a leader.

    Waiting matters on Apache Kafka, where CreateTopics returns before every
    broker's metadata has the topic; producing in that window fails.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        async with asyncio.timeout(_DEADLINE):
            new = [
                NewTopic(name, partitions, 1, topic_configs=dict(configs or {})) for name in names
            ]
            response = await admin.create_topics(new)
            failed = [(t, code, msg) for t, code, msg in response.topic_errors if code != 0]
            if failed:
                raise RuntimeError(f"CreateTopics failed: {failed}")
            # Polls the broker: there is no event to wait on.
            while not await _all_have_leaders(admin, names, partitions):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await admin.close()


async def _all_have_leaders(admin: AIOKafkaAdminClient, names: Sequence[str], n: int) -> bool:
    described = await admin.describe_topics(list(names))
    return len(described) == len(names) and all(
        t["error_code"] == 0
        and len(t["partitions"]) == n
        and all(p["leader"] >= 0 for p in t["partitions"])
        for t in described
    )


# -- produce / consume ----------------------------------------------------------------


@dataclass(frozen=True)
class OutRecord:
    """A record to produce; a bare ``bytes`` passed to :func:`produce` is its value."""

    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    partition: int | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class ConsumedRecord:
    """What a test asserts on: everything a consumer saw, none of aiokafka's types."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def required_value(self) -> bytes:
        """The value of a record that must have one (a tombstone fails here)."""
        assert self.value is not None, f"{self.topic}/{self.partition}@{self.offset} is a tombstone"
        return self.value

    def header(self, name: str) -> bytes | None:
        """The last value of header *name*, as Kafka clients conventionally read it."""
        found = [v for k, v in self.headers if k == name]
        return found[-1] if found else None


async def produce(
    bootstrap_servers: str,
    topic: str,
    records: Iterable[OutRecord | bytes],
    **producer_config: Any,
) -> list[RecordMetadata]:
    """Produce *records* in order with ``acks=all`` and return their metadata once all are acked."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", **producer_config)
    await producer.start()
    try:
        async with asyncio.timeout(_DEADLINE):
            pending = []
            for item in records:
                record = item if isinstance(item, OutRecord) else OutRecord(value=item)
                pending.append(
                    await producer.send(
                        topic,
                        value=record.value,
                        key=record.key,
                        headers=list(record.headers) or None,
                        partition=record.partition,
                        timestamp_ms=record.timestamp_ms,
                    )
                )
            return list(await asyncio.gather(*pending))
    finally:
        await producer.stop()


async def consume(
    bootstrap_servers: str,
    topics: str | Sequence[str],
    *,
    count: int | None = None,
    max_wait: float = 10.0,
    until: Callable[[list[ConsumedRecord]], bool] | None = None,
    **consumer_config: Any,
) -> list[ConsumedRecord]:
    """Read all partitions of *topics* from the start until *count* records, until
    ``until(records)`` holds, or for *max_wait* s, whichever comes first.

    No consumer group: partitions are assigned directly, so there is no group
    join to wait for (seconds on tansu) and no committed offset to leak into
    the next test. Returns what arrived, possibly fewer than *count*: the
    caller's assertion says what was expected. With ``count=None`` it reads
    for all of *max_wait*, for asserting that nothing more arrives.
    """
    names = [topics] if isinstance(topics, str) else list(topics)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **consumer_config,
    )
    await consumer.start()
    out: list[ConsumedRecord] = []
    deadline = time.monotonic() + max_wait
    try:
        partitions = await _partitions_of(consumer, names, deadline)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while (count is None or len(out) < count) and not (until is not None and until(out)):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            batch = await consumer.getmany(timeout_ms=max(1, int(min(left, 0.5) * 1000)))
            for messages in batch.values():
                out.extend(
                    ConsumedRecord(
                        topic=m.topic,
                        partition=m.partition,
                        offset=m.offset,
                        timestamp=m.timestamp,
                        key=m.key,
                        value=m.value,
                        headers=tuple(m.headers),
                    )
                    for m in messages
                )
    finally:
        await consumer.stop()
    return out


async def _partitions_of(
    consumer: AIOKafkaConsumer, names: Sequence[str], deadline: float
) -> list[TopicPartition]:
    """Every partition of *names*, waiting for metadata that does not list them yet."""
    while True:
        # All-topics metadata (what consumer.topics() fetches) does not auto-create
        # a missing topic, unlike a request naming it; the public topics() drops
        # the partition lists, hence the client's method.
        cluster = await consumer._client.fetch_all_metadata()
        found = {name: cluster.partitions_for_topic(name) for name in names}
        if all(found.values()):
            return [TopicPartition(n, p) for n, ps in found.items() for p in sorted(ps or ())]
        if time.monotonic() > deadline:
            missing = [n for n, ps in found.items() if not ps]
            raise TimeoutError(f"no partitions for topics {missing} in metadata")
        await asyncio.sleep(0.05)
