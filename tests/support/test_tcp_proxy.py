"""The TCP proxy forwards bytes, and pause() looks like a dead server without losing the broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

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
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        request_timeout_ms=1500,
        retry_backoff_ms=50,
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before", key=b"k")

        proxy.pause()
        # While the broker is unreachable a send neither succeeds nor loses the
        # record: it fails (request timeout) or stays pending.
        during = asyncio.ensure_future(producer.send_and_wait(topic, b"during", key=b"k"))
        done, _ = await asyncio.wait({during}, timeout=1.0)
        if done:
            with pytest.raises(KafkaError):
                during.result()
            during = asyncio.ensure_future(producer.send_and_wait(topic, b"during", key=b"k"))

        proxy.resume()
        await asyncio.wait_for(during, 10)
        await asyncio.wait_for(producer.send_and_wait(topic, b"after", key=b"k"), 10)
    finally:
        await producer.stop()

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
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, request_timeout_ms=1000)
    with pytest.raises(KafkaError):
        await producer.start()
    await producer.stop()
