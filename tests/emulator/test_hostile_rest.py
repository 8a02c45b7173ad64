"""Hostile REST answers: faults for some ids only."""

from __future__ import annotations

from bridge.emulator import EmulatorSettings, HttpFaultRule, TaskProfile

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
