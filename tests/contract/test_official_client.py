"""Contract: the official ``xpander-sdk`` 2.0.537 client accepts the emulator as
the platform. Each test asserts the values the client returns."""

from __future__ import annotations

from xpander_sdk import AgentExecutionStatus, Configuration, Tasks
from xpander_sdk.exceptions.module_exception import ModuleException
from xpander_sdk.models.activity import (
    AgentActivityThread,
    AgentActivityThreadMessage,
    AgentActivityThreadToolCall,
)
from xpander_sdk.models.shared import Tokens
from xpander_sdk.models.user import User
from xpander_sdk.modules.tasks.sub_modules.task import Task

from bridge.emulator.server import Emulator

AGENT = "agent-emulator-1"


async def test_acreate_and_aget(tasks: Tasks, emu: Emulator) -> None:
    user = User(id="u-1", email="u1@example.com", first_name="Ada")
    task = await tasks.acreate(
        agent_id=AGENT,
        prompt="Summarise my week",
        file_urls=["https://example.com/a.pdf"],
        user_details=user,
        events_streaming=True,
        title="Weekly",
        source="contract-test",
    )
    assert task.agent_id == AGENT and task.organization_id == emu.organization_id
    assert task.status == AgentExecutionStatus.Pending
    assert task.input.text == "Summarise my week"
    assert task.input.files == ["https://example.com/a.pdf"]
    assert task.input.user is not None and task.input.user.email == "u1@example.com"
    assert task.events_streaming is True and task.title == "Weekly"
    got = await tasks.aget(task.id)
    assert got.id == task.id and got.source == "contract-test"
    assert got.created_at == task.created_at


async def test_alist_and_alist_user_tasks_with_filters(tasks: Tasks) -> None:
    mine = User(id="u-list", email="l@example.com")
    a = await tasks.acreate(agent_id=AGENT, prompt="a", user_details=mine)
    b = await tasks.acreate(agent_id=AGENT, prompt="b")
    await tasks.acreate(agent_id="agent-emulator-2", prompt="c", user_details=mine)
    listed = await tasks.alist(AGENT)
    assert {a.id, b.id} <= {item.id for item in listed}
    assert all(item.agent_id == AGENT for item in listed)
    by_user = await tasks.alist(AGENT, filters={"user_id": "u-list"})
    assert [item.id for item in by_user] == [a.id]
    users = await tasks.alist_user_tasks("u-list")
    assert len(users) == 2 and {i.agent_id for i in users} == {AGENT, "agent-emulator-2"}
    assert all(i.user_id == "u-list" for i in users)
    filtered = await tasks.alist_user_tasks("u-list", filters={"status": "completed"})
    assert all(i.status == AgentExecutionStatus.Completed for i in filtered)


async def test_aupdate_and_astop(tasks: Tasks) -> None:
    task = await tasks.acreate(agent_id=AGENT, prompt="x", events_streaming=True)
    updated = await tasks.aupdate(
        task.id, status=AgentExecutionStatus.Paused, result="half", source="tests"
    )
    assert updated.status == AgentExecutionStatus.Paused
    assert updated.result == "half" and updated.source == "tests"
    stopped = await tasks.astop(task.id)
    assert stopped.status == AgentExecutionStatus.Stopped
    assert stopped.is_manually_stopped is True and stopped.finished_at is not None
    again = await tasks.aget(task.id)
    assert again.status == AgentExecutionStatus.Stopped


async def test_full_aevents_lifecycle(tasks: Tasks, emu: Emulator) -> None:
    emu.settings.tasks.event_mix = {
        "chunk": 3.0,
        "tool_call": 1.0,
        "context_status": 1.0,
        "future_insight": 1.0,
    }
    task = await tasks.acreate(agent_id=AGENT, prompt="stream it", events_streaming=True)
    seen = [event async for event in task.aevents()]
    types = [e.type.value for e in seen]
    assert types[0] == "connected"
    assert types[1] == "task_created" and types[-1] == "task_finished"
    assert "chunk" in types and "tool_call_request" in types
    finished = seen[-1].data
    assert isinstance(finished, Task)
    assert finished.status == AgentExecutionStatus.Completed and finished.result
    # the client drops the type it does not know (future_insight) and keeps the rest
    sent = emu.events(task.id)
    unknown = [e for e in sent if e.type == "future_insight"]
    assert len(seen) == 1 + len(sent) - len(unknown)
    assert all(e.task_id == task.id for e in seen)


async def test_aget_activity_log(tasks: Tasks, emu: Emulator) -> None:
    emu.settings.tasks.event_mix = {"tool_call": 1.0, "think": 1.0, "sub_agent_trigger": 1.0}
    task = await tasks.acreate(agent_id=AGENT, prompt="log me", events_streaming=True)
    _ = [event async for event in task.aevents()]
    log = await task.aget_activity_log()
    assert isinstance(log, AgentActivityThread) and log.id == task.id
    first, last = log.messages[0], log.messages[-1]
    assert isinstance(first, AgentActivityThreadMessage) and first.role == "user"
    assert first.content.text == "log me"
    assert isinstance(last, AgentActivityThreadMessage) and last.role == "agent"
    assert any(isinstance(m, AgentActivityThreadToolCall) for m in log.messages)


async def test_areport_external_task(configuration: Configuration, emu: Emulator) -> None:
    reported = await Task.areport_external_task(
        configuration=configuration,
        agent_id=AGENT,
        input="outside run",
        result="done outside",
        tokens=Tokens(completion_tokens=11, prompt_tokens=22),
        is_success=True,
        duration=1.5,
        used_tools=["web_search"],
    )
    assert reported.status == AgentExecutionStatus.Completed
    assert reported.result == "done outside" and reported.input.text == "outside run"
    assert reported.tokens is not None and reported.tokens.completion_tokens == 11
    assert reported.used_tools == ["web_search"] and reported.duration == 1.5
    failed = await Task.areport_external_task(
        configuration=configuration, agent_id=AGENT, id=reported.id, is_success=False
    )
    assert failed.id == reported.id and failed.status == AgentExecutionStatus.Failed
    assert emu.control.inbox.report_counts[reported.id] == 2


async def test_areport_metrics(tasks: Tasks, configuration: Configuration, emu: Emulator) -> None:
    task = await tasks.acreate(agent_id=AGENT, prompt="measure", source="api")
    task.tokens = Tokens(completion_tokens=3, prompt_tokens=4)
    task.used_tools = ["kb_search"]
    await task.areport_metrics(configuration=configuration)
    [received] = emu.metrics()
    assert received.agent_id == AGENT and received.key == task.id
    body = received.body
    assert body["execution_id"] == task.id and body["task"] == "measure"
    assert body["llm_tokens"]["worker"]["completion_tokens"] == 3
    assert body["api_calls_made"] == ["kb_search"]
    assert emu.control.inbox.metrics_counts[task.id] == 1


async def test_wrong_key_surfaces_as_401(emu: Emulator) -> None:
    bad = Tasks(
        configuration=Configuration(
            base_url=emu.base_url, api_key="wrong", organization_id=emu.organization_id
        )
    )
    try:
        await bad.alist(AGENT)
    except ModuleException as exc:
        assert exc.status_code == 401
    else:
        raise AssertionError("a wrong key must fail")
