"""Task commands from Kafka (``create``, ``update``, ``stop``): the input
contract, validated, and the reply that answers each (``docs/COMMANDS.md``).

A ``create`` message's fields are ``agent_id``, ``prompt`` and the keyword
arguments of the official client's ``Tasks.acreate`` that make sense from
Kafka; ``update`` is ``task_id`` plus those of ``Tasks.aupdate``; ``stop`` is
``task_id``. Unknown fields are refused, naming them. Every command has a
``command_id`` (given, or derived from the message's coordinates, so a
redelivered message is the same command); a create's task id is
``uuid5(namespace, command_id)``, which is what makes it run once.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from bridge.errors import InvalidDataError
from bridge.observability.metrics import CommandKind, CommandOutcome
from bridge.transforms.reports import derived_report_id
from bridge.wire import STATUSES

__all__ = [
    "CREATE_EXCLUDED",
    "REPLY_VERSION",
    "CommandKind",
    "CommandOutcome",
    "CommandResult",
    "CreateCommand",
    "ParsedCommand",
    "StopCommand",
    "UpdateCommand",
    "command_id_of",
    "encode_reply",
    "parse_command",
    "task_id_for",
    "valid_topic",
]

REPLY_VERSION = 1

#: ``Tasks.acreate`` arguments a command cannot carry, and why (docs/COMMANDS.md).
CREATE_EXCLUDED: dict[str, str] = {
    "existing_task_id": "the bridge sets the task id itself (uuid5 of command_id): exactly once",
    "agent_version": "an HTTP header, not a body field; the agent's current version runs",
    "worker_id": "local-worker execution: the bridge runs no agent worker",
    "run_locally": "local-worker execution: the bridge runs no agent worker",
    "test_run_node_id": "test runs of a workflow node belong to the builder, not to Kafka",
    "user_oidc_token": "a credential: a topic (and the DLQ, and logs) is no place for it",
    "user_tokens": "credentials for MCP auth: a topic is no place for them",
    "mcp_servers": "server details carry credentials; configure MCP servers on the agent",
    "return_metrics": "workflow-to-agent invocations only",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Id = Annotated[str, Field(min_length=1, max_length=200)]


class _Command(_Strict):
    command_id: _Id | None = Field(
        default=None,
        description=(
            "Idempotency key and the reply's key. When absent the bridge derives one from "
            "the message's topic, partition and offset (a redelivery is the same command)."
        ),
    )


class CreateCommand(_Command):
    """Start a task (``Tasks.acreate``); its id is ``uuid5(namespace, command_id)``."""

    command: Literal["create"]
    agent_id: _Id = Field(description="The agent to run.")
    prompt: str = Field(default="", description="The task's input text.")
    file_urls: list[str] = Field(default_factory=list, description="Input file URLs.")
    user_details: dict[str, JsonValue] | None = Field(
        default=None, description="The user on whose behalf it runs (the SDK's User)."
    )
    principal: dict[str, JsonValue] | None = Field(
        default=None, description="Principal (the SDK's Principal)."
    )
    attachments: list[dict[str, JsonValue]] | None = Field(
        default=None, description="Attachment references (the SDK's AttachmentRef)."
    )
    tool_call_payload_extension: dict[str, JsonValue] | None = Field(
        default=None, description="Extra payload for tool calls (sent as payload_extension)."
    )
    source: str | None = Field(default=None, description="Where the task came from.")
    output_format: Literal["text", "markdown", "json", "voice"] | None = Field(
        default=None, description="Output format."
    )
    output_schema: dict[str, JsonValue] | None = Field(
        default=None, description="JSON schema of the output (with output_format json)."
    )
    events_streaming: bool = Field(
        default=True, description="Stream the task's events (the bridge then publishes them)."
    )
    additional_context: str | None = Field(default=None, description="Extra context.")
    instructions_override: str | None = Field(default=None, description="Instructions override.")
    expected_output: str | None = Field(default=None, description="What the output should be.")
    triggering_agent_id: str | None = Field(default=None, description="Triggering agent.")
    title: str | None = Field(default=None, description="The task's title.")
    think_mode: Literal["default", "harder"] | None = Field(default=None, description="Think mode.")
    disable_attachment_injection: bool | None = Field(
        default=None, description="Do not inject attachments into the prompt."
    )
    llm_model_provider: str | None = Field(default=None, description="LLM provider override.")
    llm_model_name: str | None = Field(default=None, description="LLM model override.")
    llm_reasoning_effort: Literal["low", "medium", "high", "xhigh"] | None = Field(
        default=None, description="Reasoning effort override."
    )
    harness_cli: str | None = Field(default=None, description="Harness agents: the CLI.")
    tool_call_limit: int | None = Field(default=None, ge=0, description="Cap of tool calls.")
    permission_mode: str | None = Field(default=None, description="Harness agents: full/gated.")


class UpdateCommand(_Command):
    """Change a task (``Tasks.aupdate``): the same fields again give the same task."""

    command: Literal["update"]
    task_id: _Id = Field(description="The task to update.")
    tool_call_payload_extension: dict[str, JsonValue] | None = Field(
        default=None, description="Extra payload for tool calls."
    )
    source: str | None = Field(default=None, description="Where the task came from.")
    status: str | None = Field(default=None, description="New status (lowercase).")
    last_executed_node_id: str | None = Field(default=None, description="Last executed node.")
    result: str | None = Field(default=None, description="The task's result.")


class StopCommand(_Command):
    """Stop a task (``Tasks.astop``); stopping a stopped task is ok."""

    command: Literal["stop"]
    task_id: _Id = Field(description="The task to stop.")


class CommandResult(BaseModel):
    """The reply to one command, on ``commands.results_topic`` (or the command's
    ``kafka_replyTopic``), keyed by ``command_id``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = Field(description="Version of this contract.")
    command_id: str = Field(description="The command's id (given or derived).")
    command: Literal["create", "update", "stop", "invalid"] = Field(
        description="The command; invalid when the message named none."
    )
    outcome: Literal["ok", "rejected", "failed"] = Field(
        description=(
            "ok: done on the platform (a create whose task existed already is ok too); "
            "rejected: refused for good (invalid, agent not allowed, a 4xx), also dead-lettered; "
            "failed: the platform answered 2xx with something that is not a task."
        )
    )
    task_id: str | None = Field(description="The task (a create's derived id).")
    agent_id: str | None = Field(description="The task's agent, when known.")
    status: str | None = Field(description="The task's status in the platform's answer.")
    error: str | None = Field(description="Why it was rejected or failed.")
    time: str = Field(description="When the reply was written (RFC 3339, UTC).")


AnyCommand = Annotated[CreateCommand | UpdateCommand | StopCommand, Field(discriminator="command")]
_ADAPTER: TypeAdapter[CreateCommand | UpdateCommand | StopCommand] = TypeAdapter(AnyCommand)


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    kind: CommandKind
    command_id: str
    #: create: the agent; else ``None``
    agent_id: str | None
    #: create: the derived task id; update/stop: the given one
    task_id: str
    #: the JSON body of the platform call (stop: ``None``)
    body: bytes | None


_KINDS = ("create", "update", "stop")

#: Ids go into REST paths (percent-encoded there too): anything path-like is refused.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}")
#: Kafka's rule for topic names
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def valid_topic(name: str) -> bool:
    return bool(_TOPIC.fullmatch(name)) and name not in (".", "..")


def _check_id(field: str, value: str) -> None:
    if not _ID.fullmatch(value) or ".." in value:
        shown = value[:60].encode("unicode_escape").decode("ascii")
        raise InvalidDataError(
            f"{field} {shown!r} is not an id (letters, digits and . _ : @ -, at most 200)"
        )


def task_id_for(namespace: uuid.UUID, command_id: str) -> str:
    """The task a create command makes: the same command, the same task."""
    return str(uuid.uuid5(namespace, command_id))


def command_id_of(
    value: bytes | None, *, topic: str, partition: int, offset: int
) -> tuple[str, CommandKind]:
    """The command id and kind of any message, even one that is not a valid
    command (its rejection reply needs a key): the given ones when readable,
    else a derived id and ``invalid``."""
    try:
        raw: Any = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        raw = None
    if not isinstance(raw, dict):
        raw = {}
    given = raw.get("command_id")
    command = raw.get("command")
    kind = CommandKind(command) if command in _KINDS else CommandKind.INVALID
    if isinstance(given, str) and _ID.fullmatch(given) and ".." not in given:
        return given, kind
    return derived_report_id(topic, partition, offset), kind


def _explain(exc: ValidationError) -> str:
    errors = exc.errors()
    unknown = [
        ".".join(str(p) for p in e["loc"][1:]) for e in errors if e["type"] == "extra_forbidden"
    ]
    others = [
        f"{'.'.join(str(p) for p in e['loc'][1:]) or 'message'}: {e['msg']}"
        for e in errors
        if e["type"] != "extra_forbidden"
    ]
    parts = []
    if unknown:
        parts.append(f"unknown field(s): {', '.join(unknown)}")
    parts.extend(others)
    return "; ".join(parts)


def _create_body(message: CreateCommand, task_id: str) -> dict[str, Any]:
    """The request ``Tasks.acreate`` sends, field for field."""
    task_input: dict[str, Any] = {
        "text": message.prompt,
        "files": message.file_urls,
        "user": message.user_details,
    }
    if message.principal is not None:
        task_input["principal"] = message.principal
    if message.attachments:
        task_input["attachments"] = message.attachments
    body = message.model_dump(
        mode="json",
        exclude={
            "command",
            "command_id",
            "agent_id",
            "prompt",
            "file_urls",
            "user_details",
            "principal",
            "attachments",
            "tool_call_payload_extension",
        },
        exclude_none=True,
    )
    body["id"] = task_id
    body["input"] = task_input
    if message.tool_call_payload_extension is not None:
        body["payload_extension"] = message.tool_call_payload_extension
    return body


def parse_command(
    value: bytes | None, *, namespace: uuid.UUID, topic: str, partition: int, offset: int
) -> ParsedCommand:
    """Validate one message; ``InvalidDataError`` (DLQ, ``rejected`` reply) names why."""
    if value is None:
        raise InvalidDataError("empty message (a tombstone is not a command)")
    try:
        raw: Any = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidDataError(f"not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidDataError("not a JSON object")
    if raw.get("command") not in _KINDS:
        raise InvalidDataError("command: must be one of create, update, stop")
    try:
        message = _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise InvalidDataError(_explain(exc)) from exc
    command_id = message.command_id or derived_report_id(topic, partition, offset)
    _check_id("command_id", command_id)
    if isinstance(message, CreateCommand):
        _check_id("agent_id", message.agent_id)
        task_id = task_id_for(namespace, command_id)
        body = orjson.dumps(_create_body(message, task_id))
        return ParsedCommand(CommandKind.CREATE, command_id, message.agent_id, task_id, body)
    _check_id("task_id", message.task_id)
    if isinstance(message, UpdateCommand):
        if message.status is not None and message.status not in STATUSES:
            raise InvalidDataError(f"status: {message.status!r} is not one of {sorted(STATUSES)}")
        update = message.model_dump(
            mode="json", exclude={"command", "command_id", "task_id"}, exclude_none=True
        )
        if not update:
            raise InvalidDataError("an update with nothing to change")
        return ParsedCommand(
            CommandKind.UPDATE, command_id, None, message.task_id, orjson.dumps(update)
        )
    return ParsedCommand(CommandKind.STOP, command_id, None, message.task_id, None)


def encode_reply(
    *,
    command_id: str,
    command: CommandKind,
    outcome: CommandOutcome,
    task_id: str | None,
    agent_id: str | None,
    status: str | None,
    error: str | None,
) -> bytes:
    """One reply (``schemas/command-result.v1.json``)."""
    return orjson.dumps(
        {
            "v": REPLY_VERSION,
            "command_id": command_id,
            "command": command.value,
            "outcome": outcome.value,
            "task_id": task_id,
            "agent_id": agent_id,
            "status": status,
            "error": error,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
    )
