"""Contract: what task commands rely on, checked with the official client
against the emulator, and the bridge's client making the same calls."""

from __future__ import annotations

import uuid

import orjson
import pytest
from xpander_sdk import Configuration, Tasks

from bridge.config import PlatformConfig, StreamsConfig
from bridge.emulator.server import Emulator
from bridge.errors import NotFoundError
from bridge.observability.metrics import Metrics
from bridge.platform.client import PlatformClient

AGENT = "agent-emulator-1"


async def test_a_create_with_a_given_id_twice_is_one_task(tasks: Tasks, emu: Emulator) -> None:
    """``existing_task_id`` is the wire's ``id``: the same id again answers the
    same task (the emulator's reading of a retried create; the bridge checks
    with a GET first anyway, and treats a 409 as 'exists')."""
    task_id = str(uuid.uuid4())
    first = await tasks.acreate(agent_id=AGENT, existing_task_id=task_id, prompt="once")
    again = await tasks.acreate(agent_id=AGENT, existing_task_id=task_id, prompt="twice")
    assert first.id == again.id == task_id
    assert again.input.text == "once"
    assert sum(1 for t in emu.control.tasks() if t["id"] == task_id) == 1


async def test_the_bridge_client_creates_updates_and_stops(
    configuration: Configuration, emu: Emulator, tasks: Tasks
) -> None:
    platform = PlatformConfig(
        base_url=emu.base_url, api_key=emu.api_key, organization_id=emu.organization_id
    )
    async with PlatformClient(platform, StreamsConfig(), Metrics()) as client:
        task_id = str(uuid.uuid4())
        with pytest.raises(NotFoundError):
            await client.get_task(task_id)
        body = {"id": task_id, "input": {"text": "hi", "files": []}, "events_streaming": True}
        created = await client.create_task(AGENT, orjson.dumps(body))
        assert created["id"] == task_id and created["events_streaming"] is True
        seen = await tasks.aget(task_id)  # the official client reads what the bridge made
        assert seen.input.text == "hi"
        updated = await client.update_task(task_id, orjson.dumps({"result": "r"}))
        assert updated["result"] == "r"
        stopped = await client.stop_task(task_id)
        assert stopped["status"] == "stopped"
        assert (await client.stop_task(task_id))["status"] == "stopped"  # stopping again: ok
