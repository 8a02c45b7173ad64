"""The versioned envelope every task event is published in: the contract with
our users' consumers, documented in ``docs/EVENTS.md``; its JSON Schema is
committed as ``schemas/envelope.v1.json`` and a test keeps the two equal.

The model is the specification and what consumers (and our tests) validate
with. The hot path does not build it: ``normalize`` writes the same fields as a
dict straight to JSON, and a property test checks that every envelope it
writes validates against this model.

Compatibility promise within ``schema_version`` 1.x: fields are only added,
never removed or retyped; unknown event types and unknown fields inside
``data`` are carried as sent.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "CATEGORY_BY_TYPE",
    "LIFECYCLE_TYPES",
    "SCHEMA_VERSION",
    "Category",
    "Envelope",
    "EventSource",
    "TaskSnapshot",
    "ToolCallData",
    "TruncatedData",
]

SCHEMA_VERSION = "1.0"


class Category(StrEnum):
    """A coarse grouping of event types, stable across platform versions."""

    LIFECYCLE = "lifecycle"
    OUTPUT = "output"
    TOOL = "tool"
    REASONING = "reasoning"
    PLANNING = "planning"
    AUTH = "auth"
    OTHER = "other"


#: The task's own lifecycle: these carry a task snapshot and a ``status``, and
#: also go to the state topic.
LIFECYCLE_TYPES = frozenset({"task_created", "task_updated", "task_finished"})

#: The category of each event type the platform is known to send; any other
#: type is ``other``.
CATEGORY_BY_TYPE: dict[str, Category] = {
    **dict.fromkeys(LIFECYCLE_TYPES, Category.LIFECYCLE),
    **dict.fromkeys(
        ("sub_task_created", "sub_task_updated", "sub_task_finished", "process_state_changed"),
        Category.LIFECYCLE,
    ),
    **dict.fromkeys(
        ("chunk", "inline_card", "live_surface_created", "process_update"), Category.OUTPUT
    ),
    **dict.fromkeys(("tool_call_request", "tool_call_result"), Category.TOOL),
    **dict.fromkeys(
        ("think", "analyze", "context_status", "task_compactization"), Category.REASONING
    ),
    **dict.fromkeys(
        ("plan_updated", "sub_agent_trigger", "agent_gateway_decision", "gateway_steer_applied"),
        Category.PLANNING,
    ),
    **dict.fromkeys(("auth_event", "ask_for_secret", "secret_saved"), Category.AUTH),
}


class EventSource(StrEnum):
    """How the bridge learned of the event."""

    SSE = "sse"  #: read from the task's event stream
    POLL = "poll"  #: a status change seen by polling a task without a stream
    RESYNC = "resync"  #: synthesized from the task's status after a stream broke off
    REPORT = "report"  #: an external run recorded from the reports topic


class TaskSnapshot(BaseModel):
    """``data`` of lifecycle events (``task_created``, ``task_updated``,
    ``task_finished``): the platform's Task object. Only the fields consumers
    rely on are listed; every other field is carried."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    agent_id: str | None = None
    organization_id: str | None = None
    status: str | None = None
    internal_status: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    result: str | None = None


class ToolCallData(BaseModel):
    """``data`` of ``tool_call_request`` and ``tool_call_result``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    request_id: str | None = None
    operation_id: str | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    payload: JsonValue = None
    result: JsonValue = None
    is_error: bool | None = None


class TruncatedData(BaseModel):
    """``data`` of an envelope whose full body was over the broker's size limit;
    the body is in the dead-letter topic in ``parts`` records with this ``event_id``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    truncated: Literal[True] = True
    original_bytes: int
    sha256: str
    dlq_topic: str
    parts: int


class Envelope(BaseModel):
    """One task event, as published to Kafka (key: ``task_id``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: str = Field(
        default=SCHEMA_VERSION,
        pattern=r"^1\.\d+$",
        description="Major.minor; consumers accept any 1.x.",
    )
    event_id: str = Field(
        description=(
            "Deterministic id: the same platform event always gets the same id, so "
            "consumers deduplicate on it. From the SSE id when the server sends ids, "
            "else from task id, type, time and content."
        )
    )
    type: str = Field(description="The platform's event type, as sent (unknown types too).")
    category: Category = Field(description="Coarse grouping of the type.")
    task_id: str = Field(description="The task; also the Kafka key.")
    agent_id: str | None = Field(description="The task's agent.")
    organization_id: str | None = Field(description="The organization.")
    status: str | None = Field(
        default=None,
        description="Task status, on lifecycle events (task_created/updated/finished).",
    )
    occurred_at: datetime = Field(description="When the platform says the event happened.")
    observed_at: datetime = Field(description="When the bridge received it.")
    sequence: int = Field(
        ge=1,
        description=(
            "Per task, increasing by one for every envelope the bridge publishes for it, "
            "whatever the topic."
        ),
    )
    source: EventSource = Field(description="How the bridge learned of the event.")
    sse_id: str | None = Field(default=None, description="The SSE id, when the server sent one.")
    truncated: bool = Field(
        default=False, description="True when data was replaced by a TruncatedData stub."
    )
    data: Any = Field(
        description=(
            "The event's payload: a TaskSnapshot on lifecycle events, ToolCallData on "
            "tool events, a string on chunk, TruncatedData when truncated, else as sent."
        )
    )
