"""Event streams: a finished task's connection goes back to the pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bridge.config import PlatformConfig, StreamsConfig
from bridge.observability.metrics import Metrics
from bridge.platform.client import EventStream, PlatformClient

pytestmark = pytest.mark.timeout(30)

FINISHED = b'data: {"type": "task_finished", "data": {"status": "completed"}}\n\n'


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """A real HTTP server whose streams end 200 ms after task_finished, as a
    busy platform's may: the end is then not yet read when the task ends."""

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(FINISHED)
        await asyncio.sleep(0.2)
        return response  # aiohttp then writes the end of the chunked body

    app = web.Application()
    app.router.add_get("/{tail:.*}", events)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(int(address[1]) for address in runner.addresses if isinstance(address, tuple))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def local_address(stream: EventStream) -> object:
    # The socket is the evidence of reuse; the client does not expose it.
    connection = stream._response.connection
    assert connection is not None and connection.transport is not None
    return connection.transport.get_extra_info("sockname")


async def first_chunk(stream: EventStream) -> bytes:
    async for chunk in stream.chunks():
        return chunk
    raise AssertionError("no data")


@pytest.mark.parametrize("finish", [True, False])
async def test_a_finished_stream_gives_its_connection_to_the_next(
    server: str, finish: bool
) -> None:
    platform = PlatformConfig(base_url=server, api_key="k", organization_id="org")
    async with PlatformClient(platform, StreamsConfig(), Metrics()) as client:
        used = []
        for task_id in ("t-1", "t-2"):
            async with client.task_events(task_id, None) as stream:
                used.append(local_address(stream))
                assert b"task_finished" in await first_chunk(stream)
                if finish:
                    await stream.finish(grace_s=5.0)
        # Without finish() the body's end is still on its way: the connection
        # is closed, and the next stream pays a new handshake.
        assert (used[0] == used[1]) is finish
