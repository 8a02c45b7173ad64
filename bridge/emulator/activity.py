"""The activity log of a task (GET ``/activity/{agent_id}/{task_id}``), rebuilt from
its emitted history in the shape ``xpander_sdk.models.activity.AgentActivityThread``
parses: the user's message, tool calls, reasoning, sub-agent triggers, and the
agent's answer. Not a hot path: it decodes the kept events on each call.

``activity_body`` is the answer's bytes, grown to ``activity_min_bytes`` (a setting)
with filler tool calls, for tests of threads of many megabytes.
"""

from __future__ import annotations

from typing import Any

import orjson

from bridge.emulator.tasks import TaskRun

__all__ = ["FILLER_TOOL", "activity_body", "activity_thread"]

#: ``tool_name`` of the entries that grow a thread to ``activity_min_bytes``
FILLER_TOOL = "emulator_filler"
#: most result bytes in one filler entry
_FILL_BLOCK = 64 * 1024
_FILL_TEXT = b"emulated tool output; " * (_FILL_BLOCK // 22 + 1)


def activity_thread(run: TaskRun) -> dict[str, Any]:
    wire = run.wire
    task_input = wire.get("input") or {}
    messages: list[dict[str, Any]] = [
        {
            "id": f"{run.id}-message-user",
            "created_at": wire["created_at"],
            "role": "user",
            "content": {"text": task_input.get("text"), "files": task_input.get("files") or []},
            "sub_execution_result": False,
            "user": task_input.get("user"),
        }
    ]
    for record in run.history:
        if record.type not in (
            "tool_call_result",
            "think",
            "analyze",
            "sub_agent_trigger",
        ):
            continue
        data = orjson.loads(record.body)["data"]
        if record.type == "tool_call_result":
            messages.append(
                {
                    "id": data["tool_call_id"] or data["request_id"],
                    "created_at": record.time,
                    "tool_name": data["tool_name"],
                    "payload": data["payload"],
                    "is_error": data["is_error"],
                    "result": data["result"],
                }
            )
        elif record.type in ("think", "analyze"):
            fields = data["payload"]["input"]
            messages.append(
                {
                    "id": data["request_id"],
                    "created_at": record.time,
                    "type": record.type,
                    **{k: v for k, v in fields.items() if k != "emitted_at"},
                }
            )
        else:
            messages.append(
                {
                    "id": data.get("sub_task_id") or f"{run.id}-sub-{record.seq}",
                    "created_at": record.time,
                    "agent_id": data["agent_id"],
                    "query": data["query"],
                    "files": data["files"],
                    "reasoning": data["reasoning"],
                }
            )
    if wire.get("result") is not None:
        messages.append(
            {
                "id": f"{run.id}-message-agent",
                "created_at": wire.get("finished_at") or wire["updated_at"],
                "role": "agent",
                "content": {"text": wire["result"], "files": []},
                "sub_execution_result": False,
            }
        )
    return {
        "id": run.id,
        "created_at": wire["created_at"],
        "messages": messages,
        "user": task_input.get("user"),
    }


def activity_body(run: TaskRun, min_bytes: int = 0) -> bytes:
    """The thread as JSON bytes, at least ``min_bytes`` long: filler tool-call
    entries go before the agent's answer (or last, when there is none yet),
    each one's result sized so the total lands on ``min_bytes`` (or one entry's
    overhead past it)."""
    thread = activity_thread(run)
    body = orjson.dumps(thread)
    deficit = min_bytes - len(body)
    if deficit <= 0:
        return body
    messages = thread["messages"]
    last = messages[-1]
    at = len(messages) - 1 if last.get("role") == "agent" else len(messages)
    created_at = last["created_at"]
    fillers: list[dict[str, Any]] = []
    while deficit > 0:
        n = len(fillers) + 1
        entry: dict[str, Any] = {
            "id": f"{run.id}-filler-{n}",
            "created_at": created_at,
            "tool_name": FILLER_TOOL,
            "payload": {"n": n},
            "is_error": False,
            "result": "",
        }
        overhead = len(orjson.dumps(entry)) + 1  # the comma before it
        size = max(0, min(_FILL_BLOCK, deficit - overhead))
        entry["result"] = _FILL_TEXT[:size].decode()
        deficit -= overhead + size
        fillers.append(entry)
    messages[at:at] = fillers
    return orjson.dumps(thread)
