"""Report and metrics messages from Kafka: the input contract, validated.

A report message's fields are exactly the keyword arguments of the official
client's ``Task.areport_external_task`` (so moving from the SDK renames
nothing); a metrics message is ``agent_id`` plus the fields of
``ExecutionMetricsReport`` (what ``task.areport_metrics`` sends). Unknown
fields are refused, naming them: a typo must not vanish silently. Schemas are
committed under ``schemas/`` and documented in ``docs/EVENTS.md``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from bridge.errors import InvalidDataError
from bridge.observability.metrics import ReportKind

__all__ = [
    "ExternalTaskReport",
    "MetricsReport",
    "ParsedMessage",
    "ReportKind",  # defined in bridge.observability.metrics, with the metrics it labels
    "derived_report_id",
    "parse_message",
]

#: Namespace of report ids derived from a message's Kafka coordinates.
_REPORT_ID_NAMESPACE = uuid.UUID("5d7b0a4e-2f1c-4c3e-9a57-6c1e2b8f0d11")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReportTokens(_Strict):
    """Token usage (the official client's ``Tokens``)."""

    completion_tokens: int = Field(default=0, ge=0, description="Output tokens.")
    prompt_tokens: int = Field(default=0, ge=0, description="Input tokens.")
    cache_read_tokens: int | None = Field(
        default=None, ge=0, description="Prompt tokens served from the cache."
    )
    cache_write_tokens: int | None = Field(
        default=None, ge=0, description="Prompt tokens written to the cache."
    )
    total_tokens: int | None = Field(
        default=None, ge=0, description="Ignored if sent; the SDK serializes it."
    )


class ExternalTaskReport(_Strict):
    """One externally executed run, as ``Task.areport_external_task`` takes it."""

    agent_id: str | None = Field(
        default=None,
        min_length=1,
        description="The agent; when absent, the message key is the agent id.",
    )
    id: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Task id. When absent the bridge derives one from the message's topic, partition "
            "and offset, so a redelivered message records the same task again, not a new one."
        ),
    )
    input: str | None = Field(default=None, description="The input (prompt) of the run.")
    llm_response: JsonValue = Field(default=None, description="The raw LLM response, any JSON.")
    tokens: ReportTokens | None = Field(default=None, description="Token usage.")
    is_success: bool = Field(default=True, description="Whether the run succeeded.")
    result: str | None = Field(default=None, description="The run's final result.")
    duration: float = Field(default=0, ge=0, description="Duration in seconds.")
    used_tools: list[str] = Field(default_factory=list, description="Tools the run used.")


class ExecutionTokens(_Strict):
    inner: ReportTokens | None = Field(default=None, description="Tokens of inner calls.")
    worker: ReportTokens | None = Field(default=None, description="Tokens of the worker.")


class MetricsReport(_Strict):
    """``agent_id`` plus the fields of ``ExecutionMetricsReport``."""

    agent_id: str | None = Field(
        default=None,
        min_length=1,
        description="The agent; when absent, the message key is the agent id.",
    )
    execution_id: str = Field(min_length=1, description="The task (execution) id.")
    source: str = Field(description="Where the task came from (e.g. sdk, api).")
    sub_executions: list[str] = Field(default_factory=list, description="Sub-task ids.")
    memory_thread_id: str = Field(description="Memory thread id (the SDK sends the task id).")
    task: str = Field(description="The task's input text.")
    triggered_by: str = Field(default="N/A", description="Who triggered it.")
    skills: list[str] = Field(default_factory=list, description="Skills used.")
    status: str = Field(description="The task's status.")
    internal_status: str | None = Field(default=None, description="Internal status.")
    duration: float = Field(ge=0, description="Duration in seconds.")
    ai_model: str = Field(description="Model that served the task.")
    worker: str | None = Field(default=None, description="Worker id.")
    ai_employee_id: str | None = Field(default=None, description="Agent id as the API names it.")
    api_calls_made: list[JsonValue] | None = Field(default=None, description="Tool/API calls made.")
    result: str | None = Field(default=None, description="The task's result.")
    llm_tokens: ExecutionTokens = Field(
        default_factory=ExecutionTokens, description="Token usage, inner and worker."
    )


_MODELS: dict[ReportKind, type[ExternalTaskReport] | type[MetricsReport]] = {
    ReportKind.REPORT: ExternalTaskReport,
    ReportKind.METRICS: MetricsReport,
}


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    kind: ReportKind
    agent_id: str
    #: the task id the platform will see (given or derived)
    task_id: str
    #: the JSON body for the platform endpoint
    body: bytes


def derived_report_id(topic: str, partition: int, offset: int) -> str:
    """The same message coordinates always give the same task id."""
    return str(uuid.uuid5(_REPORT_ID_NAMESPACE, f"{topic}/{partition}/{offset}"))


#: What an id from Kafka may look like: ids go into REST paths (percent-encoded
#: there too), so anything path-like is refused here, with the field named.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}")


def _check_id(field: str, value: str) -> None:
    if not _ID.fullmatch(value) or ".." in value:
        shown = value[:60].encode("unicode_escape").decode("ascii")
        raise InvalidDataError(
            f"{field} {shown!r} is not an id (letters, digits and . _ : @ -, at most 200)"
        )


def _explain(exc: ValidationError) -> str:
    errors = exc.errors()
    unknown = [".".join(str(p) for p in e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
    others = [
        f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
        for e in errors
        if e["type"] != "extra_forbidden"
    ]
    parts = []
    if unknown:
        parts.append(f"unknown field(s): {', '.join(unknown)}")
    parts.extend(others)
    return "; ".join(parts)


def parse_message(
    kind: ReportKind,
    value: bytes | None,
    key: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
) -> ParsedMessage:
    """Validate one message into the request the platform gets.

    Raises ``InvalidDataError`` (the message goes to the DLQ) with a reason a
    person can act on.
    """
    if value is None:
        raise InvalidDataError("empty message (a tombstone is not a report)")
    try:
        raw: Any = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidDataError(f"not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidDataError("not a JSON object")
    try:
        message = _MODELS[kind].model_validate(raw)
    except ValidationError as exc:
        raise InvalidDataError(_explain(exc)) from exc
    agent_id = message.agent_id or (key.decode("utf-8", "replace") if key else None)
    if not agent_id:
        raise InvalidDataError("no agent_id: set it in the message or as the message key")
    _check_id("agent_id", agent_id)
    if isinstance(message, ExternalTaskReport):
        task_id = message.id or derived_report_id(topic, partition, offset)
        _check_id("id", task_id)
        payload = message.model_dump(mode="json", exclude={"agent_id", "tokens"})
        payload["id"] = task_id
        if message.tokens is not None:
            payload["tokens"] = message.tokens.model_dump(mode="json", exclude_none=True)
    else:
        task_id = message.execution_id
        _check_id("execution_id", task_id)
        payload = message.model_dump(mode="json", exclude={"agent_id", "llm_tokens"})
        payload["llm_tokens"] = message.llm_tokens.model_dump(mode="json", exclude_none=True)
    return ParsedMessage(kind, agent_id, task_id, orjson.dumps(payload))
