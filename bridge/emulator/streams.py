"""The task event stream: GET ``/{org}/agent-execution/{task_id}/events`` as SSE.

Each connection keeps a cursor (the SSE id of the last event it sent) into the
task's history and, whenever it wakes, writes every frame after the cursor in one
``write()``. Frames are the bytes the engine encoded at emission, so a stream
does no JSON work at all. The stream ends after ``task_finished`` (or, with
``linger_after_end``, never: it sends keep-alive comments until the client leaves).

Stream knobs (``StreamSettings``): ``id:`` lines, Last-Event-ID replay, replay
``none``/``full`` on a fresh connect, ``retry:``, the ``connected`` handshake,
keep-alive comments, lingering after the end, a redirect to another origin.
Fault knobs (``FaultSettings``): drop after N events (the socket closes with no
chunked terminator, as a dying proxy would), stall after N events (no bytes, the
connection stays open), malformed frames (injected by the engine at emission).
Injected entries (``Control.inject_raw``, ``inject_huge_line``) sit in the
history like events and are written verbatim; a huge line is generated block by
block at each write.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import orjson
from aiohttp import web

from bridge.emulator.engine import Engine
from bridge.emulator.faults import FaultInjector, StreamFaults
from bridge.emulator.hostile import huge_data_line
from bridge.emulator.tasks import EventRecord, TaskRun

__all__ = ["EventStreams", "not_found"]

_KEEPALIVE = b": keep-alive\n\n"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def not_found(detail: str) -> web.Response:
    return web.Response(
        status=404, body=orjson.dumps({"detail": detail}), content_type="application/json"
    )


class EventStreams:
    def __init__(self, engine: Engine, faults: FaultInjector) -> None:
        self.engine = engine
        self.faults = faults

    def _cursor(self, run: TaskRun, request: web.Request) -> int:
        stream = self.engine.settings.stream
        if stream.honour_last_event_id:
            raw = request.headers.get("Last-Event-ID", "").strip()
            if raw.isdigit() and int(raw) <= run.last_seq:
                return int(raw)
        return 0 if stream.replay == "full" else run.last_seq

    def _preamble(self, run: TaskRun, connection: int) -> bytes:
        settings = self.engine.settings
        parts: list[bytes] = []
        if settings.stream.retry_ms is not None:
            parts.append(b"retry: %d\n\n" % settings.stream.retry_ms)
        if settings.stream.send_connected:
            connected = {
                "type": "connected",
                "task_id": run.id,
                "organization_id": settings.organization_id,
                "time": datetime.now(UTC).isoformat(),
                "data": {"task_id": run.id, "connection": connection},
            }
            parts.append(b"data: " + orjson.dumps(connected) + b"\n\n")
        return b"".join(parts)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        engine = self.engine
        redirect = engine.settings.stream.redirect_to
        if redirect is not None:
            location = redirect.rstrip("/") + str(request.rel_url)
            return web.Response(status=307, headers={"Location": location})
        if request.match_info["org"] != engine.settings.organization_id:
            return not_found("Organization not found")
        run = engine.tasks.get(request.match_info["task_id"])
        if run is None:
            return not_found("Task not found")
        if not run.streaming:
            return not_found("Task was not created with events_streaming")

        response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        await response.prepare(request)
        stats = engine.stats
        stats.connections += 1
        stats.open_streams += 1
        run.connections += 1
        connection = run.connections
        faults = self.faults.for_stream(run, connection)
        cursor = self._cursor(run, request)
        engine.subscribe(run)
        try:
            preamble = self._preamble(run, connection)
            if preamble:
                await response.write(preamble)
            await self._pump(request, response, run, cursor, faults)
        except (ConnectionResetError, asyncio.CancelledError):
            # the client went away; nothing to finish
            pass
        finally:
            engine.unsubscribe(run)
            stats.open_streams -= 1
        return response

    async def _pump(
        self,
        request: web.Request,
        response: web.StreamResponse,
        run: TaskRun,
        cursor: int,
        faults: StreamFaults,
    ) -> None:
        engine = self.engine
        drop_after, stall_after = faults.drop_after, faults.stall_after
        stats = engine.stats
        sent = 0
        while True:
            if drop_after is not None and sent >= drop_after:
                run.drops += 1
                stats.drops += 1
                self._drop(request)
                return
            if stall_after is not None and sent >= stall_after:
                run.stalls += 1
                stats.stalls += 1
                await self._stall()
                if engine.closed:
                    return
                stall_after = None
                continue
            records = run.frames_after(cursor)
            if records:
                limit = min(
                    (n - sent for n in (drop_after, stall_after) if n is not None),
                    default=None,
                )
                if limit is not None and len(records) > limit:
                    records = records[:limit]
                await self._write(response, run, records)
                sent += len(records)
                stats.events_sent += len(records)
                cursor = records[-1].seq
                continue
            if (run.finished and not run.lingers) or engine.closed:
                return
            await self._idle(response, run)

    async def _idle(self, response: web.StreamResponse, run: TaskRun) -> None:
        """Wait for the task's next entry, with ``keepalive_s`` writing a comment
        each time that long passes without one. The one waiter is reused, so a
        lingering stream does not pile up futures on the task."""
        woken = run.wait()
        stream = self.engine.settings.stream
        while stream.keepalive_s is not None:
            done, _ = await asyncio.wait({woken}, timeout=stream.keepalive_s)
            if done:
                return
            await response.write(_KEEPALIVE)
            stream = self.engine.settings.stream  # may have been replaced meanwhile
        await woken

    @staticmethod
    async def _write(
        response: web.StreamResponse, run: TaskRun, records: list[EventRecord]
    ) -> None:
        if not run.has_huge:  # the hot path: one write for everything due
            await response.write(b"".join([r.frame for r in records]))
            return
        pending: list[bytes] = []
        for r in records:
            if r.huge is None:
                pending.append(r.frame)
                continue
            if pending:
                await response.write(b"".join(pending))
                pending = []
            # block by block: each write waits for the socket to drain
            for block in huge_data_line(*r.huge):
                await response.write(block)
        if pending:
            await response.write(b"".join(pending))

    @staticmethod
    def _drop(request: web.Request) -> None:
        # Close the socket under aiohttp: the bytes written so far are flushed,
        # the chunked terminator never is, so the client sees a broken stream.
        transport = request.transport
        if transport is not None:
            transport.close()

    async def _stall(self) -> None:
        closing = self.engine.closing
        assert closing is not None
        seconds = self.engine.settings.faults.stall_seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), seconds)
