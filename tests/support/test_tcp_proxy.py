"""The TCP proxy forwards bytes, and pause() looks like a dead server without losing the broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from confluent_kafka import KafkaException, Producer

from support.kafka import KafkaOutage, consume, create_topics
from support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[str, int]]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        yield ("127.0.0.1", server.sockets[0].getsockname()[1])


async def _echo_once(proxy: TcpProxy, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 2)
    finally:
        writer.close()


async def test_forwards_both_ways(echo_server: tuple[str, int]) -> None:
    async with TcpProxy(echo_server) as proxy:
        assert await _echo_once(proxy, b"hello") == b"hello"
        assert proxy.connections_total == 1


async def test_pause_resets_open_connections_and_drops_new_ones(
    echo_server: tuple[str, int],
) -> None:
    async with TcpProxy(echo_server) as proxy:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        writer.write(b"a")
        assert await reader.readexactly(1) == b"a"

        proxy.pause()

        # The open connection is gone: EOF or a reset, as from a dead server.
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await asyncio.wait_for(reader.readexactly(1), 2)
        writer.close()
        # A new connection is accepted and cut at once.
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await _echo_once(proxy, b"b")
        assert proxy.dropped_total >= 1

        proxy.resume()
        assert await _echo_once(proxy, b"c") == b"c"


async def test_aclose_is_idempotent_and_ends_connections(echo_server: tuple[str, int]) -> None:
    proxy = await TcpProxy(echo_server).start()
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(b"x")
    await reader.readexactly(1)

    await proxy.aclose()
    await proxy.aclose()

    assert proxy.active_connections == 0
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
        await asyncio.wait_for(reader.readexactly(1), 2)
    writer.close()


async def test_kafka_producer_survives_an_outage_without_losing_records(
    kafka_outage: KafkaOutage, topic: str
) -> None:
    bootstrap_servers, proxy = kafka_outage
    await create_topics(bootstrap_servers, topic)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "socket.timeout.ms": 1500,
            "retry.backoff.ms": 50,
        }
    )
    reports: list[tuple[bytes | None, object]] = []

    def send(value: bytes) -> None:
        producer.produce(
            topic, value, b"k", on_delivery=lambda err, msg: reports.append((msg.value(), err))
        )

    send(b"before")
    assert await asyncio.to_thread(producer.flush, 10) == 0
    proxy.pause()
    # While the broker is unreachable the record neither succeeds nor is lost:
    # the idempotent producer keeps it and retries (no report yet).
    send(b"during")
    await asyncio.to_thread(producer.flush, 1.0)
    assert (b"during", None) not in reports
    proxy.resume()
    send(b"after")
    assert await asyncio.to_thread(producer.flush, 15) == 0
    assert reports == [(b"before", None), (b"during", None), (b"after", None)]

    received = await consume(bootstrap_servers, topic, count=3, max_wait=5)
    assert [r.value for r in received] == [b"before", b"during", b"after"]
    assert proxy.dropped_total >= 1


async def test_kafka_clients_only_ever_talk_through_the_proxy(
    kafka_outage: KafkaOutage, topic: str
) -> None:
    bootstrap_servers, proxy = kafka_outage
    await create_topics(bootstrap_servers, topic)
    proxy.pause()

    # Bootstrap fails too: the broker's own port is never advertised.
    producer = Producer({"bootstrap.servers": bootstrap_servers, "socket.timeout.ms": 1000})
    with pytest.raises(KafkaException):
        await asyncio.to_thread(producer.list_topics, None, 2.0)
