"""An asyncio TCP proxy that can play "the server is down for a while".

Why a proxy and not stopping the broker: the embedded broker keeps its data in
memory, so a restart would lose every record and offset a test wants to check.
The proxy instead cuts the wire: ``pause()`` aborts every open connection (the
client sees a reset, as when a broker dies) and drops each new one as soon as
it is accepted; ``resume()`` lets connections through again to the same,
still-running server.

For Kafka, clients connect to the address the broker *advertises*, not the
one they bootstrapped with, so the broker must advertise the proxy's port
(see ``EmbeddedBroker(advertised_port=...)``); otherwise clients would bypass
the proxy after their first metadata request.

    async with TcpProxy(("127.0.0.1", broker_port)) as proxy:
        use(proxy.address)
        proxy.pause()    # every connection reset, new ones dropped
        proxy.resume()
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

__all__ = ["TcpProxy"]

_CHUNK = 64 * 1024


class _Link:
    """One proxied connection: the client side and the upstream side."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream

    def abort(self) -> None:
        # abort(), not close(): a paused proxy must look like a dead peer
        # (RST, buffered bytes discarded), not like a polite shutdown.
        for writer in (self.client, self.upstream):
            writer.transport.abort()


class TcpProxy:
    """Forwards TCP connections from ``host:port`` to ``upstream``.

    ``upstream`` may be set after ``start()`` (the Kafka fixture needs the
    proxy's port before it can start the broker that advertises it); while it
    is ``None`` connections are dropped as if paused.
    """

    def __init__(
        self,
        upstream: tuple[str, int] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.upstream = upstream
        self.host = host
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._paused = False
        self._closed = False
        #: Connections forwarded upstream since start.
        self.connections_total = 0
        #: Connections dropped on accept because the proxy was paused.
        self.dropped_total = 0

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"{self.host}:{self.port}"

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def active_connections(self) -> int:
        return len(self._links)

    async def start(self) -> Self:
        if self._server is not None or self._closed:
            raise RuntimeError("a proxy starts once")
        self._server = await asyncio.start_server(self._accept, self.host, self._requested_port)
        return self

    def pause(self) -> None:
        """Abort every open connection and drop new ones until ``resume()``."""
        self._paused = True
        for link in list(self._links):
            link.abort()

    def resume(self) -> None:
        """Forward new connections again."""
        self._paused = False

    async def aclose(self) -> None:
        """Stop listening, abort every connection, wait for their handlers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        # On 3.11 Server.wait_closed() does not wait for connection handlers;
        # they are awaited here so none outlives the proxy (or the test's loop).
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = self.upstream
        if self._paused or self._closed or upstream is None:
            self.dropped_total += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        if self._paused or self._closed:  # paused while we were connecting upstream
            self.dropped_total += 1
            link.abort()
            return
        self.connections_total += 1
        self._links.add(link)
        pipes = {
            asyncio.create_task(_pipe(reader, up_writer)),
            asyncio.create_task(_pipe(up_reader, writer)),
        }
        try:
            # Kafka does not half-close: when either side ends, the link is over.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._links.discard(link)
            link.abort()
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "paused" if self._paused else "forwarding"
        where = self.address if self._server is not None else "unstarted"
        return f"<TcpProxy {state} {where} -> {self.upstream} active={self.active_connections}>"


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await source.read(_CHUNK):
            sink.write(chunk)
            await sink.drain()
