"""Wire models of the xpander task API, shared by the bridge and the emulator.

Field names and defaults are the official client's (``xpander-sdk`` 2.0.537:
``modules/tasks/models/task.py``, ``modules/tasks/models/tasks_list.py``,
``modules/tasks/sub_modules/task.py``, ``models/shared.py``). Models the platform
sends us (``Task``, ``TaskListItem``, ``TaskUpdateEvent``...) accept and carry
unknown fields, because servers add fields over time and a bridge must pass them
on, never fail on them. ``status`` is kept a plain string for the same reason: a
status this code does not know yet is data, and ``bridge.wire.STATUSES``
says which ones we do know.

These models are for the edges (validating a request, parsing a response), not
for per-event hot paths: the bridge and the emulator move event bodies as bytes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ExecutionMetricsReport",
    "ExecutionTokens",
    "Task",
    "TaskInput",
    "TaskListItem",
    "TaskReportRequest",
    "TaskUpdateEvent",
    "TaskUser",
    "Tokens",
]


class _Open(BaseModel):
    """Accepts and keeps fields it does not declare (``model_extra``), and dumps them back."""

    model_config = ConfigDict(extra="allow")


class Tokens(_Open):
    """LLM token counts (``xpander_sdk.models.shared.Tokens``). The official client
    also serialises a computed ``total_tokens``; it is carried as an extra field."""

    completion_tokens: int | None = 0
    prompt_tokens: int | None = 0
    cache_read_tokens: int | None = 0
    cache_write_tokens: int | None = 0


class ExecutionTokens(_Open):
    """Tokens split by who spent them (``ExecutionTokens``)."""

    inner: Tokens | None = Field(default_factory=Tokens)
    worker: Tokens | None = Field(default_factory=Tokens)


class TaskUser(_Open):
    """The user behind a task (``xpander_sdk.models.user.User``: ``email`` is required)."""

    id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str
    additional_attributes: dict[str, Any] | None = None
    timezone: str | None = None


class TaskInput(_Open):
    """A task's input (``AgentExecutionInput``)."""

    text: str | None = ""
    files: list[str] | None = Field(default_factory=list)
    user: TaskUser | None = None


class Task(_Open):
    """A task as the platform returns it (GET status, create, update, stop, report,
    and the ``data`` of ``task_*`` events). Only the fields a bridge reads are
    declared; everything else is carried in ``model_extra``."""

    id: str
    agent_id: str
    organization_id: str
    input: TaskInput
    status: str | None = "pending"
    internal_status: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    paused_at: datetime | None = None
    finished_at: datetime | None = None
    result: str | None = None
    parent_execution: str | None = None
    sub_executions: list[str] | None = Field(default_factory=list)
    is_manually_stopped: bool | None = False
    source: str | None = None
    events_streaming: bool | None = False
    triggering_agent_id: str | None = None
    title: str | None = None
    tokens: Tokens | None = None
    used_tools: list[str] | None = Field(default_factory=list)
    duration: float | None = 0


class TaskListItem(_Open):
    """One row of a task list (``TasksListItem``)."""

    id: str
    agent_id: str
    user_id: str | None = None
    parent_task_id: str | None = None
    triggering_agent_id: str | None = None
    organization_id: str
    status: str
    created_at: datetime | None = None
    updated_at: datetime | None = None
    source_node_type: str | None = None
    result: str | None = None
    title: str | None = None


class TaskUpdateEvent(_Open):
    """The envelope of one SSE message on a task stream. ``type`` is a string, not an
    enum: types this code does not know are data to carry."""

    type: str
    task_id: str
    organization_id: str
    time: datetime
    data: Any = None


class TaskReportRequest(_Open):
    """Body of POST ``/agent-execution/{agent_id}/report_task`` (``TaskReportRequest``)."""

    id: str | None = None
    input: str | None = None
    llm_response: Any | None = None
    tokens: Tokens | None = None
    is_success: bool | None = True
    result: str | None = None
    duration: float | None = 0
    used_tools: list[str] | None = Field(default_factory=list)


class ExecutionMetricsReport(_Open):
    """Body of POST ``/agents-metrics/{agent_id}/execution`` (``ExecutionMetricsReport``).
    ``result`` has no default in the official model: it must be sent, possibly null."""

    execution_id: str
    source: str
    sub_executions: list[str] | None = Field(default_factory=list)
    memory_thread_id: str
    task: str
    triggered_by: str | None = "N/A"
    skills: list[str] | None = Field(default_factory=list)
    status: str
    internal_status: str | None = None
    duration: float
    ai_model: str
    worker: str | None = None
    ai_employee_id: str | None = None
    api_calls_made: list[Any] | None = None
    result: str | None
    llm_tokens: ExecutionTokens | None = Field(default_factory=ExecutionTokens)
