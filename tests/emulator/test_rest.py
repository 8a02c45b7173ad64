"""The REST API: auth, organization, validation, every task endpoint, reports."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import httpx

from bridge.emulator.server import Emulator
from bridge.platform.models import Task, TaskListItem

from .conftest import read_sse

AGENT = "agent-emulator-1"


async def _create(client: httpx.AsyncClient, **body: object) -> dict[str, object]:
    body.setdefault("input", {"text": "hello", "files": []})
    response = await client.post(f"/agent-execution/{AGENT}", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert isinstance(data, dict)
    return data


async def test_missing_or_wrong_api_key_is_401(emu: Emulator) -> None:
    async with httpx.AsyncClient(base_url=emu.base_url) as bare:
        assert (await bare.get(f"/agent-execution/executions/history/{AGENT}")).status_code == 401
        wrong = await bare.get(
            f"/agent-execution/executions/history/{AGENT}", headers={"x-api-key": "nope"}
        )
        assert wrong.status_code == 401
        assert "detail" in wrong.json()


async def test_api_key_changes_at_run_time(emu: Emulator, client: httpx.AsyncClient) -> None:
    assert (await client.get(f"/agent-execution/executions/history/{AGENT}")).status_code == 200
    emu.set_api_key("rotated")
    assert (await client.get(f"/agent-execution/executions/history/{AGENT}")).status_code == 401
    ok = await client.get(
        f"/agent-execution/executions/history/{AGENT}", headers={"x-api-key": "rotated"}
    )
    assert ok.status_code == 200


async def test_stream_under_unknown_org_is_404(emu: Emulator, client: httpx.AsyncClient) -> None:
    task = await _create(client, events_streaming=True)
    response = await client.get(f"/org-other/agent-execution/{task['id']}/events")
    assert response.status_code == 404
    missing = await client.get(f"/{emu.organization_id}/agent-execution/no-such-task/events")
    assert missing.status_code == 404


async def test_stream_of_non_streaming_task_is_404(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    task = await _create(client, events_streaming=False)
    response = await client.get(emu.events_url(str(task["id"])))
    assert response.status_code == 404


async def test_create_get_and_fields(client: httpx.AsyncClient) -> None:
    created = await _create(
        client,
        events_streaming=True,
        title="Quarterly",
        source="sdk",
        triggering_agent_id="agent-emulator-2",
        input={"text": "hi", "files": ["https://x/y.pdf"], "user": {"id": "u1", "email": "u@x"}},
        llm_model_name="unknown-future-field",
    )
    task = Task.model_validate(created)
    assert task.status == "pending" and task.events_streaming is True
    assert task.title == "Quarterly" and task.source == "sdk"
    assert task.input.files == ["https://x/y.pdf"] and task.input.user is not None
    got = await client.get(f"/agent-execution/{task.id}/status")
    assert got.status_code == 200 and got.json()["id"] == task.id
    assert (await client.get("/agent-execution/nope/status")).status_code == 404


async def test_create_with_existing_id_is_idempotent(client: httpx.AsyncClient) -> None:
    first = await _create(client, id="my-task-1")
    again = await _create(client, id="my-task-1", input={"text": "other"})
    assert first["id"] == again["id"] == "my-task-1"
    assert again["input"] == first["input"]


async def test_create_422_on_bad_body(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"/agent-execution/{AGENT}", json={"input": {"text": 5, "user": {"id": "no-email"}}}
    )
    assert response.status_code == 422
    locs = [tuple(e["loc"]) for e in response.json()["detail"]]
    assert ("body", "input", "text") in locs
    assert ("body", "input", "user", "email") in locs
    not_json = await client.post(
        f"/agent-execution/{AGENT}",
        content=b"{oops",
        headers={"content-type": "application/json"},
    )
    assert not_json.status_code == 422
    assert not_json.json()["detail"][0]["type"] == "json_invalid"


async def test_list_filters(emu: Emulator, client: httpx.AsyncClient) -> None:
    a = await _create(client, input={"text": "a", "user": {"id": "ua", "email": "a@x"}})
    b = await _create(
        client,
        input={"text": "b", "user": {"id": "ub", "email": "b@x"}},
        triggering_agent_id="agent-emulator-3",
    )
    await client.patch(f"/agent-execution/{b['id']}/update", json={"status": "paused"})
    rows = (await client.get(f"/agent-execution/executions/history/{AGENT}")).json()
    items = [TaskListItem.model_validate(r) for r in rows]
    assert {i.id for i in items} >= {a["id"], b["id"]}

    async def ids(path: str, **params: str) -> set[str]:
        response = await client.get(path, params=params)
        assert response.status_code == 200
        return {r["id"] for r in response.json()}

    history = f"/agent-execution/executions/history/{AGENT}"
    assert await ids(history, user_id="ua") == {a["id"]}
    assert await ids(history, status="paused") == {b["id"]}
    assert await ids(history, internal_status="awaiting_input") == {b["id"]}
    assert await ids(history, triggering_agent_id="agent-emulator-3") == {b["id"]}
    assert await ids(history, parent_task_id="none-such") == set()
    assert await ids("/agent-execution/executions/history/user/ub") == {b["id"]}
    assert await ids("/agent-execution/executions/history/user/ub", status="pending") == set()


async def test_parent_filter_finds_sub_tasks(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.settings.tasks.event_mix = {"sub_agent_trigger": 1.0}
    parent = await _create(client, events_streaming=True)
    await read_sse(client, emu.events_url(str(parent["id"])))
    children = emu.task(str(parent["id"]))
    assert children is not None and children["sub_executions"]
    child = emu.task(children["sub_executions"][0])
    assert child is not None
    rows = await client.get(
        f"/agent-execution/executions/history/{child['agent_id']}",
        params={"parent_task_id": str(parent["id"])},
    )
    assert {r["id"] for r in rows.json()} >= {child["id"]}


async def test_update_and_422_on_unknown_status(client: httpx.AsyncClient) -> None:
    task = await _create(client)
    updated = await client.patch(
        f"/agent-execution/{task['id']}/update",
        json={"result": "partial", "tool_call_payload_extension": {"k": 1}},
    )
    assert updated.status_code == 200
    assert updated.json()["result"] == "partial"
    assert updated.json()["payload_extension"] == {"k": 1}
    bad = await client.patch(f"/agent-execution/{task['id']}/update", json={"status": "dancing"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "status"]
    missing = await client.patch("/agent-execution/nope/update", json={})
    assert missing.status_code == 404


async def test_update_to_terminal_ends_the_stream(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.settings.tasks.event_interval_s = 0.2  # slow enough that the PATCH comes first
    task = await _create(client, events_streaming=True)
    url = emu.events_url(str(task["id"]))

    async def finish() -> None:
        await client.patch(f"/agent-execution/{task['id']}/update", json={"status": "failed"})

    read, _ = await _together(read_sse(client, url), finish())
    assert read.types[-2:] == ["task_updated", "task_finished"]
    assert read.frames[-1].json["data"]["status"] == "failed"
    assert not read.timed_out


async def test_stop_makes_a_streaming_task_finish(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.settings.tasks.event_interval_s = 0.2
    task = await _create(client, events_streaming=True)

    async def stop() -> httpx.Response:
        return await client.delete(f"/agent-execution/{task['id']}")

    read, stopped = await _together(read_sse(client, emu.events_url(str(task["id"]))), stop())
    assert stopped.status_code == 200
    assert stopped.json()["status"] == "stopped"
    assert stopped.json()["is_manually_stopped"] is True
    finished = read.frames[-1].json
    assert finished["type"] == "task_finished" and finished["data"]["status"] == "stopped"
    # stopping twice answers the same stopped task
    again = await client.delete(f"/agent-execution/{task['id']}")
    assert again.json()["finished_at"] == stopped.json()["finished_at"]
    assert (await client.delete("/agent-execution/nope")).status_code == 404


First = TypeVar("First")
Second = TypeVar("Second")


async def _together(
    first: Coroutine[Any, Any, First], second: Awaitable[Second]
) -> tuple[First, Second]:
    """``first`` started (a stream reader subscribing), then ``second``; both results."""
    reader = asyncio.create_task(first)
    await asyncio.sleep(0.1)
    other = await second
    return await reader, other


async def test_activity_log(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.settings.tasks.event_mix = {"tool_call": 1.0, "think": 1.0, "analyze": 1.0}
    task = await _create(client, events_streaming=True)
    await read_sse(client, emu.events_url(str(task["id"])))
    log = (await client.get(f"/activity/{AGENT}/{task['id']}")).json()
    assert log["id"] == task["id"]
    assert log["messages"][0]["role"] == "user"
    assert log["messages"][-1]["role"] == "agent"
    kinds = {m.get("type") or ("tool" if "tool_name" in m else "msg") for m in log["messages"]}
    assert {"tool", "msg"} <= kinds
    assert (await client.get(f"/activity/agent-emulator-2/{task['id']}")).status_code == 404


async def test_report_task_creates_and_upserts(emu: Emulator, client: httpx.AsyncClient) -> None:
    body = {
        "input": "external prompt",
        "result": "external answer",
        "is_success": False,
        "tokens": {"completion_tokens": 5, "prompt_tokens": 7, "total_tokens": 12},
        "duration": 2.5,
        "used_tools": ["web_search"],
    }
    response = await client.post(f"/agent-execution/{AGENT}/report_task", json=body)
    assert response.status_code == 200
    task = Task.model_validate(response.json())
    assert task.status == "failed" and task.result == "external answer"
    assert task.duration == 2.5 and task.used_tools == ["web_search"]
    assert task.tokens is not None and task.tokens.completion_tokens == 5
    again = await client.post(
        f"/agent-execution/{AGENT}/report_task",
        json={"id": task.id, "is_success": True, "result": "second"},
    )
    assert again.json()["id"] == task.id and again.json()["status"] == "completed"
    assert emu.control.inbox.report_counts[task.id] == 2
    assert emu.reports()[0].body == body
    assert (await client.get(f"/agent-execution/{task.id}/status")).json()["result"] == "second"


async def test_report_task_422(client: httpx.AsyncClient) -> None:
    bad = await client.post(
        f"/agent-execution/{AGENT}/report_task", json={"is_success": "maybe", "duration": "x"}
    )
    assert bad.status_code == 422
    locs = {tuple(e["loc"]) for e in bad.json()["detail"]}
    assert {("body", "is_success"), ("body", "duration")} <= locs


async def test_metrics_recorded_and_validated(emu: Emulator, client: httpx.AsyncClient) -> None:
    body = {
        "execution_id": "e1",
        "source": "api",
        "memory_thread_id": "e1",
        "task": "t",
        "status": "completed",
        "duration": 1.0,
        "ai_model": "m",
        "result": None,
        "llm_tokens": {"worker": {"completion_tokens": 1, "prompt_tokens": 2}},
    }
    ok = await client.post(f"/agents-metrics/{AGENT}/execution", json=body)
    assert ok.status_code == 200
    assert emu.control.inbox.metrics_counts["e1"] == 1
    assert emu.metrics()[0].agent_id == AGENT
    del body["result"]  # required (nullable) in the official model
    bad = await client.post(f"/agents-metrics/{AGENT}/execution", json=body)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "result"]
    assert emu.control.inbox.metrics_counts["e1"] == 1


async def test_routes_also_served_under_the_org(emu: Emulator, client: httpx.AsyncClient) -> None:
    # the official client prefixes REST paths with the org on agent-controller-like
    # hosts (port 9016): the same API must answer there
    task = await _create(client)
    got = await client.get(f"/{emu.organization_id}/agent-execution/{task['id']}/status")
    assert got.status_code == 200 and got.json()["id"] == task["id"]
    other = await client.get(f"/org-other/agent-execution/{task['id']}/status")
    assert other.status_code == 404


async def test_strict_agents(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.settings.strict_agents = True
    response = await client.post("/agent-execution/agent-unknown", json={"input": {"text": "x"}})
    assert response.status_code == 404
    assert (
        await client.get("/agent-execution/executions/history/agent-unknown")
    ).status_code == 404
