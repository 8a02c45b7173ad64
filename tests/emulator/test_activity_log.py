"""The emulator's activity log (GET ``/activity/{agent_id}/{task_id}``) read by
the official client (``Task.aget_activity_log``, unchanged): what a finished
task did comes back as an ``AgentActivityThread``, ``activity_min_bytes`` grows
it to many megabytes that still parse, and the endpoint passes the same auth and
fault machinery as every other one (endpoint kind ``activity``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from support.emulators import completing_tasks
from xpander_sdk import AgentExecutionStatus, Configuration, Tasks
from xpander_sdk.exceptions.module_exception import ModuleException
from xpander_sdk.models.activity import (
    AgentActivityThread,
    AgentActivityThreadMessage,
    AgentActivityThreadOtherEntry,
    AgentActivityThreadReasoning,
    AgentActivityThreadSubAgentTrigger,
    AgentActivityThreadToolCall,
)
from xpander_sdk.models.user import User

from bridge.emulator.activity import FILLER_TOOL
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, HttpFaultRule

pytestmark = pytest.mark.timeout(60)

AGENT = "agent-emulator-1"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    settings = EmulatorSettings()
    settings.tasks = completing_tasks(30, chunk=2.0, tool_call=2.0, think=1.0, analyze=1.0)
    async with Emulator(settings) as emulator:
        yield emulator


@pytest.fixture
def tasks(emu: Emulator) -> Tasks:
    return Tasks(
        configuration=Configuration(
            base_url=emu.base_url, api_key=emu.api_key, organization_id=emu.organization_id
        )
    )


async def _finished_task(tasks: Tasks, prompt: str = "audit the invoices") -> str:
    """A streaming task run to its end through the official client's stream."""
    user = User(id="u-activity", email="act@example.com")
    task = await tasks.acreate(
        agent_id=AGENT, prompt=prompt, user_details=user, events_streaming=True
    )
    _ = [event async for event in task.aevents()]
    return str(task.id)


async def test_the_official_client_reads_a_finished_tasks_thread(
    tasks: Tasks, emu: Emulator
) -> None:
    task_id = await _finished_task(tasks)
    task = await tasks.aget(task_id)
    assert task.status == AgentExecutionStatus.Completed and task.result
    log = await task.aget_activity_log()
    # the SDK answers the raw text when its model refuses the JSON: the type is the check
    assert isinstance(log, AgentActivityThread), log
    assert log.id == task_id and log.user is not None and log.user.email == "act@example.com"
    assert not any(isinstance(m, AgentActivityThreadOtherEntry) for m in log.messages)

    first, last = log.messages[0], log.messages[-1]
    assert isinstance(first, AgentActivityThreadMessage) and first.role == "user"
    assert first.content.text == "audit the invoices"
    assert first.user is not None and first.user.id == "u-activity"
    assert isinstance(last, AgentActivityThreadMessage) and last.role == "agent"
    assert last.content.text == task.result

    sent = emu.events(task_id)
    results = [e.payload["data"] for e in sent if e.type == "tool_call_result"]
    calls = [m for m in log.messages if isinstance(m, AgentActivityThreadToolCall)]
    assert results and len(calls) == len(results)
    for call, result in zip(calls, results, strict=True):
        assert call.tool_name == result["tool_name"]
        assert call.payload == result["payload"] and call.result == result["result"]
        assert call.is_error == result["is_error"]
    reasoning = [m for m in log.messages if isinstance(m, AgentActivityThreadReasoning)]
    thoughts = [e for e in sent if e.type in ("think", "analyze")]
    assert len(reasoning) == len(thoughts) > 0
    assert [r.type.value for r in reasoning] == [e.type for e in thoughts]
    # in the order things happened
    times = [m.created_at for m in log.messages]
    assert times == sorted(times)


async def test_sub_agent_triggers_are_in_the_thread(tasks: Tasks, emu: Emulator) -> None:
    emu.settings.tasks.event_mix = {"sub_agent_trigger": 1.0, "chunk": 1.0}
    task_id = await _finished_task(tasks, "delegate it")
    log = await (await tasks.aget(task_id)).aget_activity_log()
    assert isinstance(log, AgentActivityThread)
    triggers = [m for m in log.messages if isinstance(m, AgentActivityThreadSubAgentTrigger)]
    sent = [e.payload["data"] for e in emu.events(task_id) if e.type == "sub_agent_trigger"]
    assert len(triggers) == len(sent) > 0
    assert [t.agent_id for t in triggers] == [s["agent_id"] for s in sent]


async def test_a_task_without_a_stream_has_its_input_and_answer(
    tasks: Tasks, emu: Emulator
) -> None:
    task = await tasks.acreate(agent_id=AGENT, prompt="quietly", events_streaming=False)
    await emu.wait_finished(task.id)
    log = await (await tasks.aget(task.id)).aget_activity_log()
    assert isinstance(log, AgentActivityThread)
    roles = [m.role for m in log.messages if isinstance(m, AgentActivityThreadMessage)]
    assert roles == ["user", "agent"] and len(log.messages) == 2
    first = log.messages[0]
    assert isinstance(first, AgentActivityThreadMessage) and first.content.text == "quietly"


async def test_activity_min_bytes_makes_a_5_mb_thread_the_client_still_parses(
    tasks: Tasks, emu: Emulator
) -> None:
    task_id = await _finished_task(tasks)
    url = f"{emu.base_url}/activity/{AGENT}/{task_id}"
    headers = {"x-api-key": emu.api_key}
    async with httpx.AsyncClient(timeout=30.0) as http:
        small = (await http.get(url, headers=headers)).content
        assert FILLER_TOOL.encode() not in small  # 0, the default: nothing added
        size = 5 * 1024 * 1024
        emu.settings.activity_min_bytes = size
        big = (await http.get(url, headers=headers)).content
    assert size <= len(big) < size + 1024
    thread = orjson.loads(big)
    fillers = [m for m in thread["messages"] if m.get("tool_name") == FILLER_TOOL]
    assert len(fillers) >= size // (64 * 1024)
    # the thread as it was, the filler before the agent's answer
    assert [m for m in thread["messages"] if m.get("tool_name") != FILLER_TOOL] == orjson.loads(
        small
    )["messages"]
    assert thread["messages"][-1]["role"] == "agent"

    log = await (await tasks.aget(task_id)).aget_activity_log()
    assert isinstance(log, AgentActivityThread)
    parsed = [m for m in log.messages if getattr(m, "tool_name", None) == FILLER_TOOL]
    assert len(parsed) == len(fillers)
    assert all(isinstance(m, AgentActivityThreadToolCall) for m in parsed)


async def test_unknown_task_or_other_agent_is_a_404(tasks: Tasks, emu: Emulator) -> None:
    task_id = await _finished_task(tasks)
    task = await tasks.aget(task_id)
    task.id = "no-such-task"
    with pytest.raises(ModuleException) as missing:
        await task.aget_activity_log()
    assert missing.value.status_code == 404
    task.id, task.agent_id = task_id, "agent-emulator-2"
    with pytest.raises(ModuleException) as other_agent:
        await task.aget_activity_log()
    assert other_agent.value.status_code == 404
    assert emu.inbox.answers["activity 404"] == 2


async def test_auth_and_faults_apply_to_the_activity_kind(tasks: Tasks, emu: Emulator) -> None:
    task_id = await _finished_task(tasks)
    task = await tasks.aget(task_id)
    emu.set_faults(http=[HttpFaultRule(endpoints=["activity"], status=429, next_n=1)])
    with pytest.raises(ModuleException) as limited:
        await task.aget_activity_log()
    assert limited.value.status_code == 429
    assert (await tasks.aget(task_id)).id == task_id  # the rule targets only `activity`
    assert isinstance(await task.aget_activity_log(), AgentActivityThread)  # next_n spent

    emu.set_faults(http=[HttpFaultRule(endpoints=["*"], ids=[task_id], status=503, next_n=1)])
    with pytest.raises(ModuleException) as unavailable:
        await task.aget_activity_log()
    assert unavailable.value.status_code == 503  # the path id of `activity` is the task id

    emu.set_api_key("another-key")
    with pytest.raises(ModuleException) as refused:
        await task.aget_activity_log()
    assert refused.value.status_code == 401
    assert emu.inbox.calls["activity"] == 4
