"""``PlatformClient.get_activity_log`` against the emulator: the same thread the
official client reads, ids that look like paths kept to one segment, typed
errors for refused calls, and ``platform.max_response_bytes`` on a large thread."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from support.emulators import completing_tasks
from xpander_sdk import Configuration, Tasks
from xpander_sdk.models.activity import AgentActivityThread

from bridge.config import PlatformConfig, StreamsConfig
from bridge.emulator.activity import FILLER_TOOL
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, HttpFaultRule
from bridge.errors import (
    AuthError,
    InvalidDataError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
)
from bridge.observability.metrics import Metrics
from bridge.platform.client import PlatformClient

pytestmark = pytest.mark.timeout(60)

AGENT = "agent-emulator-1"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    settings = EmulatorSettings()
    settings.tasks = completing_tasks(20, chunk=2.0, tool_call=2.0, think=1.0)
    settings.stream.start_on_subscribe = False  # tasks run to their end unwatched
    async with Emulator(settings) as emulator:
        yield emulator


def _client(emu: Emulator, **platform: Any) -> PlatformClient:
    config = PlatformConfig(
        base_url=emu.base_url,
        api_key=emu.api_key,
        organization_id=emu.organization_id,
        **platform,
    )
    return PlatformClient(config, StreamsConfig(), Metrics())


async def _finished(emu: Emulator, task_id: str | None = None, agent_id: str = AGENT) -> str:
    run = emu.engine.create_task(agent_id, streaming=True, task_id=task_id, text="check it")
    await emu.wait_finished(run.id)
    return run.id


async def test_the_same_thread_as_the_official_client(emu: Emulator) -> None:
    task_id = await _finished(emu)
    async with _client(emu) as api:
        thread = await api.get_activity_log(AGENT, task_id)
    assert thread["id"] == task_id
    assert thread["messages"][0]["content"]["text"] == "check it"
    assert thread["messages"][-1]["content"]["text"] == emu.engine.tasks[task_id].wire["result"]
    assert any("tool_name" in m for m in thread["messages"])

    config = Configuration(
        base_url=emu.base_url, api_key=emu.api_key, organization_id=emu.organization_id
    )
    official = await (await Tasks(configuration=config).aget(task_id)).aget_activity_log()
    assert isinstance(official, AgentActivityThread)
    assert AgentActivityThread.model_validate(thread) == official


@pytest.mark.parametrize(
    "hostile",
    [
        "a/b",
        "a/..",
        "..x",
        "what?now=1",
        "100%",
        "%2e%2e",
        "a%2Fb",
        "x#y",
        "../../agent-execution/{decoy}/status",
    ],
)
async def test_a_hostile_task_id_reaches_only_its_own_thread(emu: Emulator, hostile: str) -> None:
    decoy = await _finished(emu)
    hostile = hostile.replace("{decoy}", decoy)
    await _finished(emu, task_id=hostile)
    calls = dict(emu.inbox.calls)
    async with _client(emu) as api:
        thread = await api.get_activity_log(AGENT, hostile)
    # the emulator routed the literal id (percent-decoded once) to the activity handler
    assert thread["id"] == hostile and thread["messages"][0]["content"]["text"] == "check it"
    reached = {k: v - calls.get(k, 0) for k, v in emu.inbox.calls.items() if v != calls.get(k, 0)}
    assert reached == {"activity": 1}


async def test_a_hostile_agent_id_is_one_segment_too(emu: Emulator) -> None:
    agent = "../agent-execution/x?y#z"
    task_id = await _finished(emu, agent_id=agent)
    async with _client(emu) as api:
        thread = await api.get_activity_log(agent, task_id)
        with pytest.raises(NotFoundError):
            await api.get_activity_log(AGENT, task_id)  # another agent's task
    assert thread["id"] == task_id
    assert emu.inbox.calls["activity"] == 2 and sum(emu.inbox.calls.values()) == 2


async def test_a_dot_only_id_is_refused_before_any_call(emu: Emulator) -> None:
    async with _client(emu) as api:
        for dots in ("..", ".", ""):
            with pytest.raises(InvalidDataError):
                await api.get_activity_log(AGENT, dots)
    assert emu.inbox.calls["activity"] == 0 and sum(emu.inbox.calls.values()) == 0


async def test_refused_calls_raise_typed_errors(emu: Emulator) -> None:
    task_id = await _finished(emu)
    async with _client(emu) as api:
        with pytest.raises(NotFoundError) as missing:
            await api.get_activity_log(AGENT, "no-such-task")
        assert missing.value.status == 404
        with pytest.raises(NotFoundError):
            await api.get_activity_log("agent-emulator-2", task_id)

        emu.set_faults(
            http=[HttpFaultRule(endpoints=["activity"], status=429, retry_after_s=7, next_n=1)]
        )
        with pytest.raises(RateLimitedError) as limited:
            await api.get_activity_log(AGENT, task_id)
        assert limited.value.status == 429 and limited.value.retry_after == 7.0

        emu.set_faults(http=[HttpFaultRule(endpoints=["activity"], status=502, next_n=1)])
        with pytest.raises(UnavailableError) as unavailable:
            await api.get_activity_log(AGENT, task_id)
        assert unavailable.value.status == 502

        emu.set_faults(http=[])
        assert (await api.get_activity_log(AGENT, task_id))["id"] == task_id
        emu.set_api_key("rotated")
        with pytest.raises(AuthError) as refused:
            await api.get_activity_log(AGENT, task_id)
        assert refused.value.status == 401
    assert emu.inbox.answers["activity 429"] == 1 and emu.inbox.answers["activity 502"] == 1


async def test_an_answer_that_is_not_an_object_is_invalid() -> None:
    async def listing(_: web.Request) -> web.Response:
        return web.json_response([])

    app = web.Application()
    app.router.add_get("/activity/{agent_id}/{task_id}", listing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config = PlatformConfig(base_url=f"http://127.0.0.1:{port}", api_key="k", organization_id="o")
    try:
        async with PlatformClient(config, StreamsConfig(), Metrics()) as api:
            with pytest.raises(InvalidDataError, match="not a JSON object"):
                await api.get_activity_log(AGENT, "t")
    finally:
        await runner.cleanup()


async def test_a_large_thread_within_the_cap_and_over_it(emu: Emulator) -> None:
    task_id = await _finished(emu)
    size = 5 * 1024 * 1024
    emu.settings.activity_min_bytes = size
    async with _client(emu, max_response_bytes=8 * 1024 * 1024) as api:
        thread = await api.get_activity_log(AGENT, task_id)
    fillers = [m for m in thread["messages"] if m.get("tool_name") == FILLER_TOOL]
    assert sum(len(m["result"]) for m in fillers) > size - 64 * 1024
    assert thread["messages"][-1]["role"] == "agent"

    async with _client(emu, max_response_bytes=size - 1) as api:
        with pytest.raises(InvalidDataError, match="over"):
            await api.get_activity_log(AGENT, task_id)
    # the emulator did answer both times: the client refused the second
    assert emu.inbox.answers["activity 200"] == 2
