"""Hostile REST answers: faults for some ids only, calls that never answer,
bodies far larger than a sane client should accept."""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import httpx
import orjson
import pytest

from bridge.emulator import Emulator, EmulatorSettings, HttpFaultRule, TaskProfile

from .conftest import running

AGENT = "agent-emulator-1"


def _list(agent_id: str) -> str:
    return f"/agent-execution/executions/history/{agent_id}"


def _settings(**faults: object) -> EmulatorSettings:
    s = EmulatorSettings(faults=faults, stream={"start_on_subscribe": True})
    s.tasks = TaskProfile(event_interval_s=0.002, events_per_task=10, events_jitter=0.0)
    return s


# -- per-id rules ----------------------------------------------------------------------


async def test_a_rule_with_ids_fires_only_for_those_ids() -> None:
    rule = HttpFaultRule(endpoints=["list_tasks"], ids=["a-typo"], status=404, share=1.0)
    async with running(_settings(http=[rule])) as (_emu, c):
        assert [(await c.get(_list("a-typo"))).status_code for _ in range(3)] == [404] * 3
        assert (await c.get(_list(AGENT))).status_code == 200
        # `list_tasks` is the listing by agent only; the user listing is untouched
        user_listing = await c.get("/agent-execution/executions/history/user/a-typo")
        assert user_listing.status_code == 200


async def test_ids_match_the_task_id_of_status_and_stream_calls() -> None:
    async with running(_settings()) as (emu, c):
        bad, good = emu.create_task(), emu.create_task()
        emu.set_faults(
            http=[HttpFaultRule(endpoints=["get", "stream"], ids=[bad["id"]], status=502, share=1)]
        )
        assert (await c.get(f"/agent-execution/{bad['id']}/status")).status_code == 502
        assert (await c.get(f"/agent-execution/{good['id']}/status")).status_code == 200
        assert (await c.get(emu.events_url(bad["id"]))).status_code == 502
        async with c.stream("GET", emu.events_url(good["id"])) as stream:
            assert stream.status_code == 200


async def test_calls_for_other_ids_do_not_count_down_next_n() -> None:
    rule = HttpFaultRule(endpoints=["list"], ids=["agent-x"], status=503, next_n=1)
    async with running(_settings(http=[rule])) as (_emu, c):
        assert (await c.get(_list(AGENT))).status_code == 200
        assert (await c.get(_list("agent-x"))).status_code == 503
        assert (await c.get(_list("agent-x"))).status_code == 200


async def test_ids_are_set_over_http() -> None:
    async with running(_settings()) as (emu, c):
        rules = [{"endpoints": ["list_tasks"], "ids": ["a-typo"], "status": 404, "share": 1.0}]
        put = await c.put("/_emulator/faults", json={"http": rules})
        assert put.status_code == 200 and put.json()["http"][0]["ids"] == ["a-typo"]
        assert emu.settings.faults.http[0].ids == ["a-typo"]
        assert (await c.get(_list("a-typo"))).status_code == 404
        assert (await c.get(_list(AGENT))).status_code == 200


# -- hang ------------------------------------------------------------------------------


async def test_a_hanging_call_never_answers_and_the_others_do() -> None:
    rule = HttpFaultRule(endpoints=["get"], ids=["t-hang"], hang=True, share=1.0)
    async with running(_settings(http=[rule])) as (emu, c):
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/agent-execution/t-hang/status", timeout=0.3)
        assert (await c.get("/agent-execution/t-other/status")).status_code == 404
        assert emu.stats()["hung_http"] == 1


async def test_a_hanging_stream_connect_sends_no_headers() -> None:
    async with running(_settings()) as (emu, c):
        task = emu.create_task()
        await c.patch(
            "/_emulator/faults",
            json={"http": [{"endpoints": ["stream"], "hang": True, "next_n": 1}]},
        )
        with pytest.raises(httpx.ReadTimeout):
            await c.get(emu.events_url(task["id"]), timeout=0.3)
        # next_n=1: the next connect streams
        async with c.stream("GET", emu.events_url(task["id"])) as stream:
            assert stream.status_code == 200


async def test_hung_calls_do_not_hold_up_shutdown() -> None:
    emu = Emulator(_settings(http=[HttpFaultRule(hang=True, share=1.0)]))
    await emu.start()
    async with httpx.AsyncClient(base_url=emu.base_url, timeout=30) as c:
        hung = [asyncio.create_task(c.get(_list(AGENT))) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert not any(h.done() for h in hung)
        started = time.monotonic()
        await emu.aclose()
        # well under the runner's 1 s shutdown timeout
        assert time.monotonic() - started < 0.5
        for h in hung:
            with pytest.raises(httpx.RemoteProtocolError):  # closed, never answered
                await h


# -- oversized answers -----------------------------------------------------------------


async def _read_counting(c: httpx.AsyncClient, url: str) -> tuple[httpx.Response, bytes]:
    async with c.stream("GET", url) as response:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    return response, body


async def test_an_oversized_listing_is_valid_json_of_exactly_that_size() -> None:
    size = 3_000_000
    rule = HttpFaultRule(endpoints=["list_tasks"], oversize_bytes=size, next_n=1)
    async with running(_settings(http=[rule])) as (emu, c):
        emu.create_task(agent_id=AGENT)
        response, body = await _read_counting(c, _list(AGENT))
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == len(body) == size
        items = orjson.loads(body)
        assert len(items) == 1 and len(items[0]["_padding"]) > size - 1000
        assert items[0]["agent_id"] == AGENT  # the real item, padded
        # next_n=1: the next answer is the real one
        assert orjson.loads((await c.get(_list(AGENT))).content) == [
            {k: v for k, v in items[0].items() if k != "_padding"}
        ]
        assert emu.stats()["oversized_http"] == 1


async def test_an_oversized_status_can_be_chunked_and_empty_listings_are_padded_too() -> None:
    async with running(_settings()) as (emu, c):
        task = emu.create_task()
        rule = {"endpoints": ["get", "list"], "oversize_bytes": 100_000, "share": 1.0}
        await c.patch(
            "/_emulator/faults", json={"http": [{**rule, "oversize_content_length": False}]}
        )
        response, body = await _read_counting(c, f"/agent-execution/{task['id']}/status")
        assert "Content-Length" not in response.headers
        assert response.headers["Transfer-Encoding"] == "chunked"
        status = orjson.loads(body)
        assert len(body) == 100_000 and status["id"] == task["id"]
        _, empty = await _read_counting(c, _list("agent-without-tasks"))
        assert len(empty) == 100_000 and list(orjson.loads(empty)[0]) == ["_padding"]


async def test_oversized_answers_are_streamed_not_built() -> None:
    size = 64 * 1024**2
    rule = HttpFaultRule(endpoints=["list"], oversize_bytes=size, share=1.0)
    async with running(_settings(http=[rule])) as (_emu, c):
        tracemalloc.start()
        try:
            async with c.stream("GET", _list(AGENT)) as response:
                got = 0
                async for chunk in response.aiter_raw():
                    got += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert got == size
        assert peak < size // 8
