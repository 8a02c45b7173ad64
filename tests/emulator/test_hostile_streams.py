"""Hostile streams: raw bytes injected verbatim, a data line of many megabytes.
Read as raw bytes, since the point is exactly what goes on the wire."""

from __future__ import annotations

import asyncio
import tracemalloc

import httpx
import pytest

from bridge.emulator import Emulator, EmulatorSettings, TaskProfile

from .conftest import Frame, running

# what a misbehaving server sends; each is injected verbatim
DEEP = b'data: {"type":"chunk","data":' + b"[" * 300 + b"]" * 300 + b"}\n\n"
BIG_INT = b'data: {"type":"chunk","data":12345678901234567890123456789}\n\n'
HUGE_RETRY = b"retry: 99999999999999999999999999999\n\n"
BAD_UTF8 = b'data: {"type":"chunk","data":"\xff\xfe\xc3("}\n\n'
NO_TYPE = b'data: {"task_id":"t","data":"an event without a type"}\n\n'
HOSTILE = (DEEP, BIG_INT, HUGE_RETRY, BAD_UTF8, NO_TYPE)


def _settings(**stream: object) -> EmulatorSettings:
    s = EmulatorSettings(stream={"send_connected": False, **stream})
    s.tasks = TaskProfile(event_interval_s=0.002, events_per_task=8, events_jitter=0.0)
    return s


async def _read_raw(c: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None) -> bytes:
    async with c.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        return b"".join([chunk async for chunk in response.aiter_raw()])


def _frames(raw: bytes) -> list[Frame]:
    """Parse SSE frames that are valid UTF-8 (tests keep hostile bytes out of it)."""
    frames = []
    for block in raw.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            frames.append(Frame(data=fields["data"], id=fields.get("id")))
    return frames


# -- raw frames ------------------------------------------------------------------------


async def test_raw_bytes_go_out_verbatim_at_their_position() -> None:
    # the task holds at pending until subscribed, so the raw entries come first
    async with running(_settings(replay="full")) as (emu, c):
        task = emu.create_task()
        slots = [emu.control.inject_raw(task["id"], data) for data in HOSTILE]
        assert slots == [1, 2, 3, 4, 5]
        raw = await _read_raw(c, emu.events_url(task["id"]))
        assert raw.startswith(b"".join(HOSTILE) + b"id: 6\ndata: ")
        events = _frames(raw[len(b"".join(HOSTILE)) :])
        assert [f.id for f in events] == [str(i) for i in range(6, 14)]
        assert events[-1].type == "task_finished"
        # inspection lists events only; the raw entries took ids 1-5
        assert [e.id for e in emu.events(task["id"])] == [f.id for f in events]
        assert emu.control.tasks()[0]["events"] == 8


async def test_raw_bytes_reach_a_connected_stream_and_replays_keep_their_place() -> None:
    settings = _settings(replay="none")
    settings.tasks.event_interval_s = 10.0  # after task_created the task sleeps
    settings.tasks.interval_jitter = 0.0
    async with running(settings) as (emu, c):
        task = emu.create_task()
        url = emu.events_url(task["id"])
        async with c.stream("GET", url) as response:
            chunks = response.aiter_raw()
            seen = b""
            while not seen.endswith(b"\n\n"):
                seen += await anext(chunks)
            assert seen.startswith(b"id: 1\n") and b'"task_created"' in seen
            injected = await c.post(f"/_emulator/tasks/{task['id']}/raw", content=BAD_UTF8)
            assert injected.json() == {"task_id": task["id"], "seq": 2}
            while len(seen) < len(seen.split(b"\n\n")[0]) + 2 + len(BAD_UTF8):
                seen += await anext(chunks)
            assert seen.endswith(b"\n\n" + BAD_UTF8)
            assert (await c.delete(f"/agent-execution/{task['id']}")).status_code == 200
            rest = b"".join([chunk async for chunk in chunks])
        assert [f.id for f in _frames(rest)] == ["3", "4"]  # the raw entry took 2
        # Last-Event-ID before the raw entry replays it; at it, skips it
        before = await _read_raw(c, url, {"Last-Event-ID": "1"})
        assert before == BAD_UTF8 + rest
        assert await _read_raw(c, url, {"Last-Event-ID": "2"}) == rest


async def test_raw_injection_is_refused_for_unknown_or_non_streaming_tasks() -> None:
    async with running(_settings()) as (emu, c):
        quiet = emu.create_task(events_streaming=False)
        with pytest.raises(KeyError):
            emu.control.inject_raw("no-such-task", NO_TYPE)
        with pytest.raises(ValueError, match="events_streaming"):
            emu.control.inject_raw(quiet["id"], NO_TYPE)
        assert (await c.post("/_emulator/tasks/nope/raw", content=NO_TYPE)).status_code == 404
        assert (
            await c.post(f"/_emulator/tasks/{quiet['id']}/raw", content=b"x")
        ).status_code == 422
        streaming = emu.create_task()
        assert (await c.post(f"/_emulator/tasks/{streaming['id']}/raw")).status_code == 422


# -- a huge data line ------------------------------------------------------------------


class _LineCounter:
    """Consumes ``data: <fill...>\\n\\n<rest>`` chunk by chunk, keeping only the
    rest: the huge line is counted, never stored."""

    def __init__(self, fill: bytes) -> None:
        self.fill = fill
        self.head = b""
        self.size = 0
        self.rest = b""
        self.in_line = False
        self.done = False

    def feed(self, chunk: bytes) -> None:
        if self.done:
            self.rest += chunk
            return
        if not self.in_line:
            self.head += chunk
            if len(self.head) < 6:
                return
            assert self.head.startswith(b"data: ")
            chunk, self.in_line = self.head[6:], True
        end = chunk.find(b"\n")
        line = chunk if end < 0 else chunk[:end]
        assert line.strip(self.fill) == b""
        self.size += len(line)
        if end >= 0:
            self.rest, self.done = chunk[end:], True


async def _count_line(c: httpx.AsyncClient, url: str, fill: bytes) -> _LineCounter:
    counter = _LineCounter(fill)
    async with c.stream("GET", url) as response:
        async for chunk in response.aiter_raw():
            counter.feed(chunk)
    return counter


async def test_a_huge_data_line_is_generated_then_the_stream_goes_on() -> None:
    size = 64 * 1024**2
    async with running(_settings(replay="full")) as (emu, c):
        task = emu.create_task()
        assert emu.control.inject_huge_line(task["id"], size) == 1
        tracemalloc.start()
        try:
            counter = await _count_line(c, emu.events_url(task["id"]), b"x")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert counter.size == size
        assert peak < size // 8  # neither side held the line
        assert counter.rest.startswith(b"\n\nid: 2\n")
        events = _frames(counter.rest)
        assert [f.id for f in events] == [str(i) for i in range(2, 10)]
        assert events[-1].type == "task_finished"


async def test_a_huge_line_over_http_is_replayed_from_its_place() -> None:
    async with running(_settings(replay="none", start_on_subscribe=False)) as (emu, c):
        task = emu.create_task()
        await emu.wait_finished(task["id"])
        body = {"size_bytes": 1_000_001, "fill": "ab"}
        posted = await c.post(f"/_emulator/tasks/{task['id']}/huge-line", json=body)
        assert posted.json()["seq"] == 9
        url = emu.events_url(task["id"])
        for _ in range(2):  # generated again for each replay
            raw = await _read_raw(c, url, {"Last-Event-ID": "8"})
            assert raw == b"data: " + (b"ab" * 500_001)[:1_000_001] + b"\n\n"
        bad = await c.post(f"/_emulator/tasks/{task['id']}/huge-line", json={"size_bytes": -1})
        assert bad.status_code == 422
        with pytest.raises(ValueError, match="line break"):
            emu.control.inject_huge_line(task["id"], 10, fill=b"a\nb")


async def test_a_client_leaving_mid_line_frees_the_stream() -> None:
    emu = Emulator(_settings(replay="full"))
    await emu.start()
    try:
        task = emu.create_task()
        emu.control.inject_huge_line(task["id"], 512 * 1024**2)
        async with (
            httpx.AsyncClient(headers={"x-api-key": emu.api_key}, timeout=5) as c,
            c.stream("GET", emu.events_url(task["id"])) as response,
        ):
            assert response.status_code == 200
            got = b""
            async for chunk in response.aiter_raw():
                got += chunk
                if len(got) > 1024**2:
                    break
            assert got.startswith(b"data: xxx")
            assert emu.stats()["open_streams"] == 1
        for _ in range(200):
            if emu.stats()["open_streams"] == 0:
                break
            await asyncio.sleep(0.01)
        assert emu.stats()["open_streams"] == 0
    finally:
        await emu.aclose()


# -- keep-alives, lingering after the end ----------------------------------------------


async def _read_for(c: httpx.AsyncClient, url: str, seconds: float) -> tuple[bytes, bool]:
    """The bytes a stream sends within ``seconds``, and whether it was still open."""
    got = bytearray()

    async def consume() -> None:
        async with c.stream("GET", url) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                got.extend(chunk)

    try:
        await asyncio.wait_for(consume(), seconds)
    except TimeoutError:
        return bytes(got), True
    return bytes(got), False


async def test_a_lingering_stream_sends_only_keepalives_after_the_end() -> None:
    async with running(_settings(linger_after_end=True, keepalive_s=0.05)) as (emu, c):
        task = emu.create_task(outcome="completed")
        url = emu.events_url(task["id"])
        raw, still_open = await _read_for(c, url, 0.8)
        assert still_open
        at = raw.index(b": keep-alive\n\n")
        frames = _frames(raw[:at])
        assert [f.id for f in frames] == [str(i) for i in range(1, 8)]
        assert frames[-1].json["data"]["status"] == "completed"
        assert frames[-1].type == "task_updated" and b"task_finished" not in raw
        keepalives = raw[at:]
        assert keepalives == b": keep-alive\n\n" * (len(keepalives) // 14) != b""
        assert len(keepalives) // 14 >= 5
        # REST says it is over; a new connect lingers as well, with nothing to replay
        status = await c.get(f"/agent-execution/{task['id']}/status")
        assert status.json()["status"] == "completed"
        again, still_open = await _read_for(c, url, 0.3)
        assert still_open and again.startswith(b": keep-alive\n\n")
        assert b"data:" not in again


async def test_lingering_streams_end_when_the_emulator_stops() -> None:
    emu = Emulator(_settings())
    await emu.start()
    async with httpx.AsyncClient(headers={"x-api-key": emu.api_key}, timeout=5) as c:
        put = await c.patch(f"{emu.base_url}/_emulator/stream", json={"linger_after_end": True})
        assert put.status_code == 200 and put.json()["linger_after_end"] is True
        assert put.json()["send_connected"] is False  # the others are kept
        task = emu.create_task()
        reader = asyncio.create_task(_read_for(c, emu.events_url(task["id"]), 5.0))
        await emu.wait_finished(task["id"])
        await asyncio.sleep(0.2)
        assert not reader.done()  # no keepalive_s: open and silent
        await asyncio.wait_for(emu.aclose(), 0.5)
        raw, still_open = await reader
        assert not still_open and b"task_finished" not in raw


async def test_keepalives_fill_an_idle_stream() -> None:
    settings = _settings(keepalive_s=0.05)
    settings.tasks.event_interval_s = 10.0
    async with running(settings) as (emu, c):
        task = emu.create_task()
        raw, still_open = await _read_for(c, emu.events_url(task["id"]), 0.4)
        assert still_open
        first, _, rest = raw.partition(b"\n\n")
        assert b"task_created" in first
        assert rest.count(b": keep-alive\n\n") >= 3
        assert rest == b": keep-alive\n\n" * rest.count(b": keep-alive\n\n")


# -- redirect --------------------------------------------------------------------------


async def test_the_events_endpoint_can_redirect_to_another_origin() -> None:
    async with running(_settings()) as (emu, c):
        task = emu.create_task()
        url = emu.events_url(task["id"]) + "?since=3"
        emu.update_stream(redirect_to="http://elsewhere.example:8443/")
        moved = await c.get(url)
        assert moved.status_code == 307
        assert moved.headers["Location"] == (
            f"http://elsewhere.example:8443/{emu.organization_id}"
            f"/agent-execution/{task['id']}/events?since=3"
        )
        assert moved.content == b""
        # over HTTP, and back
        patch = await c.patch("/_emulator/stream", json={"redirect_to": None})
        assert patch.json()["redirect_to"] is None
        async with c.stream("GET", url) as response:
            assert response.status_code == 200
        bad = await c.put("/_emulator/stream", json={"redirect_to": ""})
        assert bad.status_code == 422
        assert (await c.get("/_emulator/stream")).json()["redirect_to"] is None
