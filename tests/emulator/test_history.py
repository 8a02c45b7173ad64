"""The history knob (finished tasks seeded per agent at start), the listing's
``status`` filter over it, and the bytes each listing sent (``inbox.list_bytes``)."""

from __future__ import annotations

from datetime import datetime

from bridge.emulator.settings import EmulatorSettings
from bridge.platform.models import TaskListItem
from bridge.wire import TERMINAL_STATUSES

from .conftest import running

AGENTS = ["agent-emulator-1", "agent-emulator-2"]
HISTORY = f"/agent-execution/executions/history/{AGENTS[0]}"


def _settings(history: int) -> EmulatorSettings:
    return EmulatorSettings(agent_ids=AGENTS, history_per_agent=history)


async def test_history_is_seeded_per_agent_finished_with_the_fields_a_listing_has() -> None:
    async with running(_settings(200)) as (emu, client):
        rows = (await client.get(HISTORY)).json()
        other = (await client.get(f"/agent-execution/executions/history/{AGENTS[1]}")).json()
        assert len(rows) == len(other) == 200
        assert not {r["id"] for r in rows} & {r["id"] for r in other}
        items = [TaskListItem.model_validate(r) for r in rows]
        assert all(i.agent_id == AGENTS[0] and i.status in TERMINAL_STATUSES for i in items)
        assert {i.status for i in items} == TERMINAL_STATUSES  # the profile's shares
        assert all(r["result"] and r["updated_at"] and r["user_id"] for r in rows)
        # newest first, as the emulator lists, times in the past
        created = [datetime.fromisoformat(r["created_at"]) for r in rows]
        assert created == sorted(created, reverse=True)
        # no streams, no events: cheap to create
        runs = [emu.engine.tasks[r["id"]] for r in rows]
        assert all(run.finished and not run.history and not run.scheduled for run in runs)
        full = (await client.get(f"/agent-execution/{rows[0]['id']}/status")).json()
        assert full["finished_at"] and full["tokens"]["prompt_tokens"] > 0
        assert full["is_manually_stopped"] == (full["status"] == "stopped")


async def test_no_history_by_default() -> None:
    async with running(_settings(0)) as (_, client):
        assert (await client.get(HISTORY)).json() == []


async def test_the_status_filter_lists_live_tasks_only_and_costs_their_bytes() -> None:
    async with running(_settings(1_000)) as (emu, client):
        body = {"input": {"text": "hi"}, "events_streaming": True}
        live = await client.post(f"/agent-execution/{AGENTS[0]}", json=body)
        live_id = live.json()["id"]  # held at pending until a subscriber comes

        everything = await client.get(HISTORY)
        pending = await client.get(HISTORY, params={"status": "pending"})
        executing = await client.get(HISTORY, params={"status": "executing"})

        assert len(everything.json()) == 1_001 and everything.json()[0]["id"] == live_id
        assert [r["id"] for r in pending.json()] == [live_id]
        assert executing.json() == []
        completed = (await client.get(HISTORY, params={"status": "completed"})).json()
        assert completed and all(r["status"] == "completed" for r in completed)
        sent = emu.inbox.list_bytes
        assert sent["list_tasks"] == len(everything.content)
        assert sent["list_tasks status=pending"] == len(pending.content)
        assert sent["list_tasks status=executing"] == len(b"[]")
        assert sent["list_tasks status=pending"] * 500 < sent["list_tasks"]
        user = await client.get(
            "/agent-execution/executions/history/user/user-emulator-1", params={"status": "paused"}
        )
        assert user.json() == [] and sent["list_user_tasks status=paused"] == 2
