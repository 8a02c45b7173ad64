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

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.cimpl import NewTopic

from bridge.kafka.embedded import EmbeddedBroker
from bridge.kafka.group import in_message

from .tcp_proxy import TcpProxy

__all__ = [
    "CAPABILITIES",
    "ConsumedRecord",
    "KafkaKind",
    "KafkaOutage",
    "KafkaService",
    "OutRecord",
    "RecordMetadata",
    "consume",
    "create_topics",
    "described",
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
    #: Idempotent producers work (tansu too, through librdkafka).
    supports_idempotence: bool = True
    #: Transactional producers commit, abort and fence (tansu too, through librdkafka).
    supports_transactions: bool = True
    #: read_committed consumers skip the records of aborted transactions, and an
    #: open transaction of a dead producer is aborted after its timeout (tansu
    #: does neither: no aborted-transaction index in Fetch, no expiry).
    hides_aborted_transactions: bool = True
    #: A read_committed reader sees a committed transaction while a transaction of
    #: another producer, written after it, is still open on the partition (the last
    #: stable offset is the first offset of the oldest open transaction). tansu
    #: holds the reader until no transaction at all is open there.
    reads_past_overlapping_transactions: bool = True
    #: A transactional offset commit from a group generation or member the group
    #: has left is refused (KIP-447 zombie fencing; tansu commits it).
    fences_stale_generations: bool = True
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
    "aborted_transactions": "hides_aborted_transactions",
    "overlapping_transactions": "reads_past_overlapping_transactions",
    "generation_fencing": "fences_stale_generations",
    "compaction": "supports_compaction",
    "max_message_bytes": "enforces_max_message_bytes",
    "alter_topics": "supports_alter_topics",
    "accurate_end_offsets": "accurate_end_offsets",
    "rejects_produce_to_missing_topic": "rejects_produce_to_missing_topic",
}


def tansu_service(bootstrap_servers: str, kind: KafkaKind) -> KafkaService:
    """Capabilities of tansu 0.6.0 with librdkafka, as probed in docs/notes/tansu.md."""
    return KafkaService(
        bootstrap_servers=bootstrap_servers,
        kind=kind,
        broker="tansu",
        hides_aborted_transactions=False,
        reads_past_overlapping_transactions=False,
        fences_stale_generations=False,
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
    await asyncio.to_thread(_create_topics, bootstrap_servers, names, partitions, configs)


def _create_topics(
    bootstrap_servers: str,
    names: Sequence[str],
    partitions: int,
    configs: Mapping[str, str] | None,
) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    new = [NewTopic(name, partitions, 1, config=dict(configs or {})) for name in names]
    for name, future in admin.create_topics(new, request_timeout=_DEADLINE).items():
        try:
            future.result(_DEADLINE)
        except KafkaException as exc:
            raise RuntimeError(f"CreateTopics failed for {name}: {exc}") from exc
    deadline = time.monotonic() + _DEADLINE
    while not _all_have_leaders(admin, names, partitions):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {list(names)} have no leaders after {_DEADLINE} s")
        time.sleep(0.05)


async def described(bootstrap_servers: str, names: list[str]) -> dict[str, tuple[int, str | None]]:
    """Per topic: its partition count and its ``cleanup.policy`` (``None`` when unset)."""

    def describe() -> dict[str, tuple[int, str | None]]:
        admin = AdminClient({"bootstrap.servers": bootstrap_servers})
        metadata = admin.list_topics(timeout=10).topics
        found: dict[str, tuple[int, str | None]] = {}
        for name in names:
            if name not in metadata or metadata[name].error is not None:
                found[name] = (0, None)
                continue
            resource = ConfigResource(ConfigResource.Type.TOPIC, name)
            entries = admin.describe_configs([resource])[resource].result(timeout=10)
            policy = entries.get("cleanup.policy")
            found[name] = (len(metadata[name].partitions), policy.value if policy else None)
        return found

    return await asyncio.to_thread(describe)


def _all_have_leaders(admin: AdminClient, names: Sequence[str], n: int) -> bool:
    topics = admin.list_topics(timeout=_DEADLINE).topics
    return all(
        name in topics
        and topics[name].error is None
        and len(topics[name].partitions) == n
        and all(p.leader >= 0 for p in topics[name].partitions.values())
        for name in names
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
class RecordMetadata:
    """Where a produced record landed."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class ConsumedRecord:
    """What a test asserts on: everything a consumer saw, none of the client's types."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, raw: Any) -> ConsumedRecord:
        """From a confluent-kafka message."""
        m = in_message(raw)
        return cls(
            topic=m.topic,
            partition=m.partition,
            offset=m.offset,
            timestamp=m.timestamp,
            key=m.key,
            value=m.value,
            headers=tuple(m.headers),
        )

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
    """Produce *records* in order with ``acks=all`` (idempotent) and return their
    metadata once all are acked. Extra settings are librdkafka's names."""
    items = [item if isinstance(item, OutRecord) else OutRecord(value=item) for item in records]
    return await asyncio.to_thread(_produce, bootstrap_servers, topic, items, producer_config)


def _produce(
    bootstrap_servers: str, topic: str, records: list[OutRecord], extra: dict[str, Any]
) -> list[RecordMetadata]:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            **extra,
        }
    )
    landed: list[RecordMetadata | None] = [None] * len(records)
    errors: list[str] = []
    for index, record in enumerate(records):

        def delivered(error: Any, message: Any, index: int = index) -> None:
            if error is not None:
                errors.append(str(error))
            else:
                landed[index] = RecordMetadata(
                    message.topic(), message.partition(), message.offset()
                )

        kwargs: dict[str, Any] = {"on_delivery": delivered}
        if record.partition is not None:
            kwargs["partition"] = record.partition
        if record.timestamp_ms is not None:
            kwargs["timestamp"] = record.timestamp_ms
        if record.headers:
            kwargs["headers"] = list(record.headers)
        producer.produce(topic, record.value, record.key, **kwargs)
    left = producer.flush(_DEADLINE)
    if left or errors:
        raise TimeoutError(f"produce to {topic}: {left} unacknowledged, errors {errors}")
    return [m for m in landed if m is not None]


async def consume(
    bootstrap_servers: str,
    topics: str | Sequence[str],
    *,
    count: int | None = None,
    max_wait: float = 10.0,
    until: Callable[[list[ConsumedRecord]], bool] | None = None,
    read_committed: bool = True,
    **consumer_config: Any,
) -> list[ConsumedRecord]:
    """Read all partitions of *topics* from the start until *count* records, until
    ``until(records)`` holds, or for *max_wait* s, whichever comes first.

    Reads committed records only, as the bridge's consumers are told to
    (``read_committed=False`` also sees open and aborted transactions: needed
    on tansu after a replica died mid-transaction, since tansu never expires
    its transaction). No consumer group: partitions are assigned directly, so
    there is no group join to wait for and no committed offset to leak into
    the next test. Returns what arrived, possibly fewer than *count*: the
    caller's assertion says what was expected. With ``count=None`` it reads
    for all of *max_wait*, for asserting that nothing more arrives.
    """
    names = [topics] if isinstance(topics, str) else list(topics)
    return await asyncio.to_thread(
        _consume, bootstrap_servers, names, count, max_wait, until, read_committed, consumer_config
    )


def _consume(
    bootstrap_servers: str,
    names: list[str],
    count: int | None,
    max_wait: float,
    until: Callable[[list[ConsumedRecord]], bool] | None,
    read_committed: bool,
    extra: dict[str, Any],
) -> list[ConsumedRecord]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "fetch.wait.max.ms": 50,
            **extra,
        }
    )
    out: list[ConsumedRecord] = []
    deadline = time.monotonic() + max_wait
    try:
        consumer.assign(_partitions_of(consumer, names, deadline))
        # ``until`` reads every record so far: asked on each batch it made
        # reading a soak's 500,000 records quadratic. Asked when the reader has
        # caught up (a short batch) or every few seconds, it costs n log n.
        ask = True
        asked_at = time.monotonic()
        while (count is None or len(out) < count) and not (
            until is not None and ask and until(out)
        ):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            batch = consumer.consume(10_000, min(left, 0.5))
            ask = len(batch) < 1_000 or time.monotonic() - asked_at > 5.0
            if ask:
                asked_at = time.monotonic()
            for m in batch:
                if m.error() is not None:
                    continue
                out.append(ConsumedRecord.of(m))
    finally:
        consumer.close()
    return out


def _partitions_of(
    consumer: Consumer, names: Sequence[str], deadline: float
) -> list[TopicPartition]:
    """Every partition of *names* from the start, waiting for metadata that does
    not list them yet."""
    while True:
        topics = consumer.list_topics(timeout=5).topics
        found = {
            name: sorted(topics[name].partitions)
            for name in names
            if name in topics and topics[name].error is None and topics[name].partitions
        }
        if len(found) == len(names):
            return [TopicPartition(n, p, OFFSET_BEGINNING) for n, ps in found.items() for p in ps]
        if time.monotonic() > deadline:
            missing = [n for n in names if n not in found]
            raise TimeoutError(f"no partitions for topics {missing} in metadata")
        time.sleep(0.05)
