"""Deterministic payloads for emulated tasks: ids, prompts, and the ``data`` of each
event type, in the shapes the official client parses (``ToolCallRequest``,
``ToolCallResult``, ``DeepPlanning``, ``ContextStatus``...).

Everything is drawn from a ``random.Random`` the caller owns (one per task), so the
same seed gives the same content whatever the wall clock or the other tasks do.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from typing import Any

__all__ = [
    "WORDS",
    "analyze_data",
    "chunk_text",
    "context_status_data",
    "future_insight_data",
    "make_id",
    "plan_data",
    "prompt_text",
    "result_text",
    "sub_agent_data",
    "think_data",
    "tool_call_request_data",
    "tool_call_result_data",
]

WORDS = [
    "the",
    "order",
    "ships",
    "from",
    "the",
    "north",
    "warehouse",
    "after",
    "the",
    "invoice",
    "clears",
    "and",
    "the",
    "customer",
    "confirms",
    "the",
    "delivery",
    "window",
    "so",
    "we",
    "update",
    "the",
    "ledger",
    "notify",
    "the",
    "team",
    "and",
    "check",
    "the",
    "refund",
    "policy",
    "before",
    "closing",
    "the",
    "ticket",
    "with",
    "a",
    "summary",
]

_TOOLS = ("crm_lookup", "web_search", "sql_query", "send_email", "calendar_check", "kb_search")
_PROMPTS = (
    "Summarise the open tickets for {who}",
    "Find the refund policy and draft a reply to {who}",
    "Reconcile last week's invoices for {who}",
    "Plan a follow-up meeting with {who}",
    "Check the delivery status of the latest order for {who}",
)
_PLAN_STEPS = ("Collect context", "Query the systems", "Draft the answer", "Review and send")


def make_id(seed: int, namespace: str, n: int) -> str:
    """A UUID-shaped id that depends only on (seed, namespace, n)."""
    digest = hashlib.blake2b(f"{seed}/{namespace}/{n}".encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))


def _words(rng: random.Random, low: int, high: int) -> str:
    start = rng.randrange(len(WORDS))
    count = rng.randint(low, high)
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(count))


def prompt_text(rng: random.Random, who: str) -> str:
    return rng.choice(_PROMPTS).format(who=who)


def result_text(rng: random.Random, status: str) -> str:
    if status == "completed":
        return "Done: " + _words(rng, 8, 20) + "."
    if status == "stopped":
        return "Stopped before completion."
    return f"Task {status}: " + _words(rng, 4, 10) + "."


def chunk_text(rng: random.Random) -> str:
    """A text fragment of the LLM output (``chunk`` data is a bare string)."""
    return _words(rng, 1, 6) + " "


def tool_call_request_data(rng: random.Random, call_id: str) -> dict[str, Any]:
    tool = rng.choice(_TOOLS)
    return {
        "request_id": call_id,
        "operation_id": tool,
        "tool_call_id": call_id,
        "graph_node_id": None,
        "tool_name": tool,
        "payload": {"query": _words(rng, 2, 5), "limit": rng.randint(1, 20)},
        "reasoning": {"title": f"Use {tool}", "description": _words(rng, 4, 8)},
        "plan_task_id": None,
    }


def tool_call_result_data(
    rng: random.Random, request: dict[str, Any], is_error: bool
) -> dict[str, Any]:
    result: Any = (
        {"error": "upstream timed out", "code": 504}
        if is_error
        else {"rows": rng.randint(0, 50), "summary": _words(rng, 3, 9)}
    )
    return {
        "request_id": request["request_id"],
        "operation_id": request["operation_id"],
        "tool_call_id": request["tool_call_id"],
        "graph_node_id": None,
        "tool_name": request["tool_name"],
        "payload": request["payload"],
        "reasoning": None,
        "plan_task_id": None,
        "result": result,
        "is_error": is_error,
        "approval_request_id": None,
    }


def _reasoning(
    rng: random.Random, call_id: str, tool: str, fields: dict[str, Any]
) -> dict[str, Any]:
    # The platform sends reasoning as a ToolCallRequest whose payload["input"]
    # holds the AgentActivityThreadReasoning fields (title, confidence, ...).
    return {
        "request_id": call_id,
        "operation_id": tool,
        "tool_call_id": call_id,
        "tool_name": tool,
        "payload": {
            "input": {"title": _words(rng, 2, 4), "confidence": round(rng.random(), 2), **fields}
        },
        "plan_task_id": None,
    }


def think_data(rng: random.Random, call_id: str) -> dict[str, Any]:
    return _reasoning(rng, call_id, "think", {"thought": _words(rng, 6, 14)})


def analyze_data(rng: random.Random, call_id: str) -> dict[str, Any]:
    return _reasoning(
        rng,
        call_id,
        "analyze",
        {"result": _words(rng, 3, 8), "analysis": _words(rng, 6, 14)},
    )


def plan_data(rng: random.Random, task_id: str, progress: int) -> dict[str, Any]:
    """A ``DeepPlanning`` object; ``progress`` steps are marked completed."""
    steps = rng.randint(2, len(_PLAN_STEPS))
    return {
        "enabled": True,
        "enforce": False,
        "started": True,
        "question_raised": False,
        "tasks": [
            {"id": f"{task_id}-plan-{i}", "title": _PLAN_STEPS[i], "completed": i < progress}
            for i in range(steps)
        ],
    }


def sub_agent_data(rng: random.Random, agent_id: str, sub_task_id: str | None) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "query": _words(rng, 4, 9),
        "files": [],
        "reasoning": {"title": "Delegate", "description": _words(rng, 4, 8)},
        "sub_task_id": sub_task_id,
    }


def context_status_data(rng: random.Random, used: int) -> dict[str, Any]:
    window = 200_000
    percent = round(min(100.0, used * 100.0 / window), 1)
    return {
        "estimated_tokens": used,
        "context_window": window,
        "percent": percent,
        "auto_compact_threshold": 80.0,
        "emergency_threshold": 95.0,
        "compacting": False,
    }


def future_insight_data(rng: random.Random) -> dict[str, Any]:
    """The payload of ``future_insight``, an event type no client knows."""
    return {
        "insight": _words(rng, 4, 10),
        "score": round(rng.random(), 3),
        "tags": rng.sample(WORDS[:12], 2),
    }
