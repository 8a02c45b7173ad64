"""SSE semantics knobs: ids, replay, Last-Event-ID, retry, connected,
start_on_subscribe, fan-out to several subscribers."""

from __future__ import annotations

import asyncio

import httpx

from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, TaskProfile

from .conftest import read_sse


def _settings(**stream: object) -> EmulatorSettings:
    s = EmulatorSettings(stream=stream)
    s.tasks = TaskProfile(event_interval_s=0.002, events_per_task=15, events_jitter=0.0)
    return s


async def _open(settings: EmulatorSettings) -> tuple[Emulator, httpx.AsyncClient]:
    emu = Emulator(settings)
    await emu.start()
    client = httpx.AsyncClient(headers={"x-api-key": emu.api_key}, timeout=5)
    return emu, client


async def test_full_stream_with_ids_connected_first_and_finished_last() -> None:
    emu, client = await _open(_settings())
    try:
        task = emu.create_task()
        read = await read_sse(client, emu.events_url(task["id"]))
        assert not read.timed_out and read.error is None
        assert read.types[0] == "connected" and read.frames[0].id is None
        assert [f.id for f in read.events] == [str(i) for i in range(1, 16)]
        assert read.types[-1] == "task_finished"
        # the exact bytes sent are the ones inspection reports
        sent = [f.data.encode() for f in read.events]
        assert sent == [e.json for e in emu.events(task["id"])]
    finally:
        await client.aclose()
        await emu.aclose()


async def test_no_ids_and_no_connected_and_retry() -> None:
    emu, client = await _open(_settings(send_ids=False, send_connected=False, retry_ms=1500))
    try:
        task = emu.create_task()
        read = await read_sse(client, emu.events_url(task["id"]))
        assert read.retry == 1500
        assert all(f.id is None for f in read.frames)
        assert "connected" not in read.types
        assert len(read.frames) == 15
        assert all(e.id is None for e in emu.events(task["id"]))
    finally:
        await client.aclose()
        await emu.aclose()


async def test_start_on_subscribe_holds_task_until_first_subscriber() -> None:
    emu, client = await _open(_settings(start_on_subscribe=True))
    try:
        task = emu.create_task()
        await asyncio.sleep(0.1)
        assert emu.events(task["id"]) == []
        wire = emu.task(task["id"])
        assert wire is not None and wire["status"] == "pending"
        read = await read_sse(client, emu.events_url(task["id"]))
        assert read.types[1] == "task_created"  # nothing was missed
    finally:
        await client.aclose()
        await emu.aclose()


async def test_replay_none_sends_only_live_events() -> None:
    settings = _settings(start_on_subscribe=False, replay="none")
    settings.tasks.event_interval_s = 0.02
    emu, client = await _open(settings)
    try:
        task = emu.create_task()
        await asyncio.sleep(0.12)
        already = len(emu.events(task["id"]))
        assert already >= 2
        read = await read_sse(client, emu.events_url(task["id"]))
        assert int(read.events[0].id or 0) > already - 1
        assert read.types[-1] == "task_finished"
        # a connect after the end gets nothing and the stream ends at once
        after = await read_sse(client, emu.events_url(task["id"]))
        assert after.events == [] and not after.timed_out
    finally:
        await client.aclose()
        await emu.aclose()


async def test_replay_full_sends_history_first() -> None:
    emu, client = await _open(_settings(start_on_subscribe=False, replay="full"))
    try:
        task = emu.create_task()
        await emu.wait_finished(task["id"])
        read = await read_sse(client, emu.events_url(task["id"]))
        assert [f.id for f in read.events] == [str(i) for i in range(1, 16)]
    finally:
        await client.aclose()
        await emu.aclose()


async def test_last_event_id_resumes_after_that_id() -> None:
    emu, client = await _open(_settings(start_on_subscribe=False, replay="none"))
    try:
        task = emu.create_task()
        await emu.wait_finished(task["id"])
        url = emu.events_url(task["id"])
        read = await read_sse(client, url, headers={"Last-Event-ID": "9"})
        assert [f.id for f in read.events] == [str(i) for i in range(10, 16)]
        junk = await read_sse(client, url, headers={"Last-Event-ID": "not-a-number"})
        assert junk.events == []  # falls back to replay=none
    finally:
        await client.aclose()
        await emu.aclose()


async def test_last_event_id_ignored_when_knob_off() -> None:
    emu, client = await _open(
        _settings(start_on_subscribe=False, replay="full", honour_last_event_id=False)
    )
    try:
        task = emu.create_task()
        await emu.wait_finished(task["id"])
        read = await read_sse(client, emu.events_url(task["id"]), headers={"Last-Event-ID": "9"})
        assert len(read.events) == 15
    finally:
        await client.aclose()
        await emu.aclose()


async def test_every_subscriber_gets_every_event() -> None:
    settings = _settings(start_on_subscribe=True)
    settings.tasks.event_interval_s = 0.01
    emu, client = await _open(settings)
    try:
        task = emu.create_task()
        url = emu.events_url(task["id"])
        reads = await asyncio.gather(*(read_sse(client, url) for _ in range(3)))
        ids = [[f.id for f in r.events] for r in reads]
        # the first subscriber started the task; the others joined within ms
        assert all(i[-1] == "15" for i in ids)
        assert len(ids[0]) == 15
        assert emu.stats()["connections"] == 3
        assert emu.stats()["open_streams"] == 0
    finally:
        await client.aclose()
        await emu.aclose()


async def test_client_going_away_closes_its_stream() -> None:
    settings = _settings()
    settings.tasks.event_interval_s = 0.5
    emu, client = await _open(settings)
    try:
        task = emu.create_task()
        read = await read_sse(client, emu.events_url(task["id"]), max_frames=2)
        assert len(read.frames) == 2
        for _ in range(100):
            if emu.stats()["open_streams"] == 0:
                break
            await asyncio.sleep(0.01)
        assert emu.stats()["open_streams"] == 0
    finally:
        await client.aclose()
        await emu.aclose()


async def test_aclose_ends_open_streams_and_is_idempotent() -> None:
    settings = _settings()
    settings.tasks.event_interval_s = 5.0
    emu, client = await _open(settings)
    try:
        task = emu.create_task()
        reader = asyncio.create_task(read_sse(client, emu.events_url(task["id"]), deadline_s=5))
        await asyncio.sleep(0.2)
        await asyncio.wait_for(emu.aclose(), 3)
        await emu.aclose()
        read = await reader
        assert not read.timed_out
    finally:
        await client.aclose()
