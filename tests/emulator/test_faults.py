"""Fault injection: drops, stalls, malformed frames, 5xx/429, delays; determinism;
changes at run time, in Python and over HTTP."""

from __future__ import annotations

import time

import httpx

from bridge.emulator.settings import EmulatorSettings, FaultSettings, HttpFaultRule, TaskProfile

from .conftest import read_sse, running

AGENT = "agent-emulator-1"
LIST = f"/agent-execution/executions/history/{AGENT}"


def _settings(**faults: object) -> EmulatorSettings:
    s = EmulatorSettings(faults=faults, stream={"start_on_subscribe": True})
    s.tasks = TaskProfile(event_interval_s=0.002, events_per_task=20, events_jitter=0.0)
    return s


async def test_drop_after_n_events_then_resume_with_last_event_id() -> None:
    async with running(_settings(drop_after_events=5, drop_max_per_task=1)) as (emu, client):
        task = emu.create_task()
        url = emu.events_url(task["id"])
        first = await read_sse(client, url)
        assert isinstance(first.error, httpx.RemoteProtocolError)  # no clean end
        assert [f.id for f in first.events] == ["1", "2", "3", "4", "5"]
        second = await read_sse(client, url, headers={"Last-Event-ID": "5"})
        assert second.error is None
        assert [f.id for f in second.events] == [str(i) for i in range(6, 21)]
        assert emu.stats()["drops"] == 1


async def test_drop_share_is_seeded_per_connection() -> None:
    async def dropped(seed: int) -> list[bool]:
        settings = _settings(drop_after_events=1, drop_share=0.5)
        settings.seed = seed
        async with running(settings) as (emu, c):
            out = []
            for _ in range(8):
                task = emu.create_task()
                out.append((await read_sse(c, emu.events_url(task["id"]))).error is not None)
            return out

    first = await dropped(11)
    assert first == await dropped(11)
    assert True in first and False in first


async def test_stall_keeps_connection_open_without_bytes() -> None:
    async with running(_settings(stall_after_events=3)) as (emu, client):
        task = emu.create_task()
        read = await read_sse(client, emu.events_url(task["id"]), deadline_s=0.5)
        assert read.timed_out
        assert len(read.events) == 3
        assert emu.stats()["stalls"] == 1


async def test_stall_for_a_while_then_resume() -> None:
    async with running(_settings(stall_after_events=3, stall_seconds=0.3)) as (emu, client):
        task = emu.create_task()
        started = time.monotonic()
        read = await read_sse(client, emu.events_url(task["id"]))
        assert time.monotonic() - started >= 0.3
        assert len(read.events) == 20 and read.types[-1] == "task_finished"


async def test_malformed_frames_are_interleaved_and_recorded() -> None:
    async with running(_settings(malformed_share=0.5)) as (emu, client):
        task = emu.create_task()
        read = await read_sse(client, emu.events_url(task["id"]))
        bad = [f for f in read.frames if f.type is None]
        assert bad and all(f.id is None for f in bad)
        assert len(read.events) == 20
        recorded = [e for e in emu.events(task["id"]) if e.malformed_before]
        assert len(recorded) == len(bad) == emu.stats()["malformed_emitted"]


async def test_next_n_calls_fail_then_succeed() -> None:
    rule = HttpFaultRule(endpoints=["list"], status=503, next_n=2)
    async with running(_settings(http=[rule])) as (_emu, c):
        codes = [(await c.get(LIST)).status_code for _ in range(3)]
        assert codes == [503, 503, 200]
        # other endpoint kinds are untouched
        assert (await c.get("/agent-execution/x/status")).status_code == 404


async def test_429_carries_retry_after() -> None:
    rule = HttpFaultRule(endpoints=["create"], status=429, next_n=1, retry_after_s=3)
    async with running(_settings(http=[rule])) as (_emu, c):
        first = await c.post(f"/agent-execution/{AGENT}", json={"input": {"text": "x"}})
        assert first.status_code == 429 and first.headers["Retry-After"] == "3"
        again = await c.post(f"/agent-execution/{AGENT}", json={"input": {"text": "x"}})
        assert again.status_code == 200


async def test_stream_connect_can_fail() -> None:
    rule = HttpFaultRule(endpoints=["stream"], status=502, next_n=1)
    async with running(_settings(http=[rule])) as (emu, c):
        task = emu.create_task()
        assert (await c.get(emu.events_url(task["id"]))).status_code == 502
        read = await read_sse(c, emu.events_url(task["id"]))
        assert read.types[-1] == "task_finished"


async def test_share_of_calls_is_seeded() -> None:
    async def codes(seed: int) -> list[int]:
        settings = _settings(http=[HttpFaultRule(status=500, share=0.5)])
        settings.seed = seed
        async with running(settings) as (_emu, c):
            return [(await c.get(LIST)).status_code for _ in range(16)]

    first = await codes(5)
    assert first == await codes(5)
    assert set(first) == {200, 500}


async def test_delay_slows_answers() -> None:
    async with running(_settings(delay_s=0.2, delay_endpoints=["get"])) as (_emu, c):
        started = time.monotonic()
        await c.get(LIST)
        fast = time.monotonic() - started
        started = time.monotonic()
        await c.get("/agent-execution/x/status")
        assert time.monotonic() - started >= 0.2 > fast


async def test_faults_change_at_run_time_over_http() -> None:
    async with running(_settings()) as (emu, c):
        assert (await c.get(LIST)).status_code == 200
        put = await c.put("/_emulator/faults", json={"http": [{"status": 500, "next_n": 1}]})
        assert put.status_code == 200
        assert (await c.get(LIST)).status_code == 500
        assert (await c.get(LIST)).status_code == 200
        patch = await c.patch("/_emulator/faults", json={"malformed_share": 0.25})
        assert patch.json()["malformed_share"] == 0.25
        assert emu.settings.faults.malformed_share == 0.25
        bad = await c.put("/_emulator/faults", json={"drop_after": 3})
        assert bad.status_code == 422
        emu.set_faults(FaultSettings())
        assert (await c.get("/_emulator/faults")).json()["malformed_share"] == 0.0
