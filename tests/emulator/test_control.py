"""The ``/_emulator/`` surface, as a test driving a subprocess would use it."""

from __future__ import annotations

import argparse

import httpx

from bridge.emulator import cli as emulator_cli
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings
from bridge.wire import Route

from .conftest import read_sse


async def test_control_surface_round_trip(emu: Emulator) -> None:
    async with httpx.AsyncClient(base_url=emu.base_url, timeout=5) as c:
        health = (await c.get("/_emulator/health")).json()
        assert health["ok"] and health["base_url"] == emu.base_url
        created = await c.post(
            "/_emulator/tasks", json={"outcome": "error", "events": 9, "agent_id": "agent-x"}
        )
        task = created.json()
        assert task["agent_id"] == "agent-x"
        read = await read_sse(c, emu.events_url(task["id"]), headers={"x-api-key": emu.api_key})
        assert len(read.events) == 9
        waited = await c.post(f"/_emulator/tasks/{task['id']}/wait", params={"timeout": "2"})
        assert waited.json()["status"] == "error"
        events = (await c.get(f"/_emulator/tasks/{task['id']}/events")).json()
        assert [e["id"] for e in events] == [str(i) for i in range(1, 10)]
        assert events[0]["json"] == read.events[0].data
        listed = (await c.get("/_emulator/tasks", params={"status": "error"})).json()
        assert [t["id"] for t in listed] == [task["id"]]
        stats = (await c.get("/_emulator/stats")).json()
        assert stats["events_emitted"] == 9 and stats["events_sent"] == 9
        assert stats["calls"]["stream"] == 1
        assert (await c.get("/_emulator/tasks/nope/events")).status_code == 404
        assert (await c.post("/_emulator/tasks", json={"bogus": 1})).status_code == 422


async def test_api_key_and_inbox_over_http(emu: Emulator) -> None:
    async with httpx.AsyncClient(base_url=emu.base_url, timeout=5) as c:
        assert (await c.put("/_emulator/api-key", json={"api_key": "k2"})).status_code == 200
        body = {"id": "r1", "result": "ok"}
        headers = {"x-api-key": "k2"}
        report = await c.post(
            "/agent-execution/agent-emulator-1/report_task", json=body, headers=headers
        )
        assert report.status_code == 200
        inbox = (await c.get("/_emulator/inbox")).json()
        assert inbox["report_counts"] == {"r1": 1}
        assert inbox["reports"][0]["body"] == body
        assert inbox["calls"]["report"] == 1
        assert inbox["answers"] == {"report 200": 1}


async def test_scenario_preset_at_run_time(emu: Emulator) -> None:
    emu.settings.stream.start_on_subscribe = False
    async with httpx.AsyncClient(base_url=emu.base_url, timeout=5) as c:
        started = await c.post(
            "/_emulator/scenario", json={"preset": "burst", "tasks": 5, "events": 10}
        )
        namespace = started.json()["namespace"]
        assert namespace.startswith("scenario")
        for _ in range(100):
            if len(emu.engine.tasks) == 5 and all(r.finished for r in emu.engine.tasks.values()):
                break
            await __import__("asyncio").sleep(0.01)
        assert emu.stats()["events_emitted"] == 50
        bad = await c.post("/_emulator/scenario", json={"preset": "nope"})
        assert bad.status_code == 422


def test_cli_settings_from_flags() -> None:
    parser = argparse.ArgumentParser()
    emulator_cli.configure_parser(parser)
    args = parser.parse_args(
        ["--port", "0", "--seed", "4", "--replay", "full", "--no-ids", "--scenario", "idle"]
    )
    settings = emulator_cli.build_settings(args)
    assert isinstance(settings, EmulatorSettings)
    assert settings.port == 0 and settings.seed == 4
    assert settings.stream.replay == "full" and settings.stream.send_ids is False
    assert settings.scenario.task_count == 0
    default = emulator_cli.build_settings(parser.parse_args([]))
    assert default.port == 9016 and default.scenario.task_count is None


async def test_an_unlisted_task_is_found_by_id_only(emu: Emulator) -> None:
    listed = emu.control.create_task(events=5)
    hidden = emu.control.create_task(events=5, unlisted=True)
    user = hidden["input"]["user"]["id"]
    async with httpx.AsyncClient(
        base_url=emu.base_url, headers={"x-api-key": emu.api_key}, timeout=5
    ) as c:
        agent_path = Route.LIST_TASKS.format(agent_id=hidden["agent_id"])
        for params in ({}, {"status": "pending"}, {"status": "executing"}):
            ids = [t["id"] for t in (await c.get(agent_path, params=params)).json()]
            assert hidden["id"] not in ids
        assert listed["id"] in [t["id"] for t in (await c.get(agent_path)).json()]
        user_path = Route.LIST_USER_TASKS.format(user_id=user)
        assert hidden["id"] not in [t["id"] for t in (await c.get(user_path)).json()]
        found = await c.get(Route.GET_TASK.format(task_id=hidden["id"]))
        assert found.status_code == 200 and found.json()["id"] == hidden["id"]
    # the control surface is inspection: it shows every task
    assert hidden["id"] in [t["id"] for t in emu.control.tasks()]
