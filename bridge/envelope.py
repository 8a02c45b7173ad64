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

Consumers read a record with :func:`read_envelope` (value and headers, as any
Kafka client gives them), or :func:`read_confluent` / :func:`read_aiokafka`
(the client's message object); ``docs/CONSUMING.md`` shows whole consumers.
This module imports pydantic and orjson only: no Kafka client, nothing else
of the bridge.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol, TypeAlias

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

__all__ = [
    "ACTIVITY_TYPE",
    "CATEGORY_BY_TYPE",
    "LIFECYCLE_TYPES",
    "SCHEMA_VERSION",
    "ActivityAssembler",
    "ActivityEnvelope",
    "AiokafkaRecord",
    "Category",
    "ConfluentMessage",
    "Envelope",
    "EventSource",
    "InvalidEnvelope",
    "RecordHeaders",
    "TaskSnapshot",
    "ToolCallData",
    "TruncatedData",
    "UnsupportedSchemaVersion",
    "read_activity",
    "read_aiokafka",
    "read_confluent",
    "read_envelope",
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
    task_id: str = Field(min_length=1, description="The task; also the Kafka key.")
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


#: ``type`` of the activity topic's records (``ce_type`` ``ai.xpander.task.activity``).
ACTIVITY_TYPE = "activity"


class ActivityEnvelope(BaseModel):
    """An ended task's activity thread, as published to the activity topic (key:
    ``task_id``). A thread whose record would be over ``activity.max_part_bytes``
    comes as ``parts`` records (same key, so same partition, in order), each
    with ``part`` and a ``chunk`` of the thread's JSON text: concatenate the
    chunks in ``part`` order and parse (:class:`ActivityAssembler` does)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: str = Field(
        default=SCHEMA_VERSION,
        pattern=r"^1\.\d+$",
        description="Major.minor; consumers accept any 1.x.",
    )
    event_id: str = Field(
        description="Deterministic id of this record (of this part, when in parts): "
        "a repeat after a restart has the same id."
    )
    activity_id: str = Field(
        description="Deterministic id of the task's activity thread (from the task id): "
        "deduplicate threads on it; every part of one thread carries it."
    )
    type: Literal["activity"] = Field(description="Always activity.")
    task_id: str = Field(min_length=1, description="The task; also the Kafka key.")
    agent_id: str | None = Field(description="The task's agent.")
    organization_id: str | None = Field(description="The organization.")
    status: str | None = Field(default=None, description="The task's final status.")
    observed_at: datetime = Field(description="When the bridge fetched the thread.")
    part: int = Field(default=1, ge=1, description="This record's place among parts, from 1.")
    parts: int = Field(default=1, ge=1, description="How many records carry the thread.")
    thread_bytes: int = Field(
        ge=0, description="Size of the thread's JSON text (UTF-8 bytes), as the platform sent it."
    )
    sha256: str | None = Field(
        default=None,
        description="In parts: SHA-256 (hex) of the thread's JSON text, to check the reassembly.",
    )
    data: Any = Field(
        default=None,
        description="The thread (AgentActivityThread: id, created_at, messages, ...) exactly "
        "as the platform sent it, unknown fields included; null when in parts.",
    )
    chunk: str | None = Field(
        default=None,
        description="In parts: this part's slice of the thread's JSON text (whole characters).",
    )


# -- reading records ------------------------------------------------------------------

#: A header value as Kafka clients give it (confluent-kafka may give ``None`` or ``str``).
HeaderValue: TypeAlias = bytes | bytearray | memoryview | str | None
#: A record's headers as Kafka clients give them: aiokafka and kafka-python a
#: sequence of ``(name, value)`` pairs, confluent-kafka a list of pairs or
#: ``None``; a mapping is accepted too.
RecordHeaders: TypeAlias = Mapping[str, HeaderValue] | Iterable[tuple[str, HeaderValue]] | None

_VERSION = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})")
_MAJOR, _MINOR = (int(part) for part in SCHEMA_VERSION.split("."))
#: ``ce_type`` is this prefix and the envelope's ``type`` (``bridge.transforms.normalize``).
_CE_TYPE_PREFIX = "ai.xpander.task."
#: 20 digits in a row, or 19 after a minus: an integer orjson would read as a
#: float (beyond unsigned 64 bits, or below signed 64 bits).
_LONG_NUMBER = re.compile(rb"\d{20}|-\d{19}")
_MAX_PROBLEMS_SHOWN = 3


class InvalidEnvelope(ValueError):
    """The record is not an envelope: its value is not JSON, not an object, a
    field is missing or mistyped, a tombstone (no value), or its CloudEvents
    headers contradict its body. Skip it or dead-letter it; the records after
    it are unaffected."""


class UnsupportedSchemaVersion(ValueError):
    """The envelope's ``schema_version`` has a major this module does not read:
    a bridge newer (or older) by a major version wrote it. Not a bad record but
    an out-of-date consumer: stop and upgrade rather than skip. Deliberately
    not an :class:`InvalidEnvelope`, so ``except InvalidEnvelope`` does not
    swallow it."""

    def __init__(self, seen: str) -> None:
        self.seen = seen
        self.supported = SCHEMA_VERSION
        super().__init__(
            f"envelope schema_version {seen!r} is not supported: this reader reads "
            f"{_MAJOR}.x (it was written for {SCHEMA_VERSION}); upgrade the consumer's "
            "xpander-bridge package"
        )


def read_envelope(
    value: bytes | bytearray | memoryview | str | None, headers: RecordHeaders = None
) -> Envelope:
    """Validate one record of the events or state topic into an :class:`Envelope`.

    ``value`` is the record's value; ``headers`` its headers in any shape Kafka
    clients give (see :data:`RecordHeaders`), or ``None`` to skip the check.

    Versions: any ``schema_version`` 1.x is read. Fields a newer 1.x minor
    added (unknown to this model) are ignored, as the compatibility promise
    allows (they stay in the record's value); a record of this module's
    minor or older must match the model exactly. A record without
    ``schema_version`` is read as 1.0 (the model's default). Another major
    raises :class:`UnsupportedSchemaVersion`.

    Headers: when ``ce_id``, ``ce_type`` or ``ce_subject`` is present and
    disagrees with the body (``event_id``, ``ai.xpander.task.`` + ``type``,
    ``task_id``), the record raises :class:`InvalidEnvelope`: the bridge
    writes both from the same values, so a disagreement means the record was
    altered or written by someone else, and neither can be trusted. Other
    headers are not looked at.

    Numbers in ``data`` keep their value: an integer past 64 bits is read as a
    Python ``int``, exactly (except inside a payload nested deeper than
    Python's recursion limit, where it is read as a ``float``).

    Raises :class:`InvalidEnvelope` for anything that is not an envelope
    (never another exception for any ``bytes``), and
    :class:`UnsupportedSchemaVersion` as said above.
    """
    if value is None:
        raise InvalidEnvelope("a tombstone (a record without a value) is not an envelope")
    parsed = _parse_json(value)
    if not isinstance(parsed, dict):
        raise InvalidEnvelope(f"not an envelope: the value is a JSON {_json_kind(parsed)}")
    if _from_newer_minor(parsed.get("schema_version", SCHEMA_VERSION)):
        parsed = {name: field for name, field in parsed.items() if name in Envelope.model_fields}
    try:
        envelope = Envelope.model_validate(parsed)
    except ValidationError as exc:
        raise InvalidEnvelope(_describe(exc)) from None
    if headers is not None:
        _check_headers(envelope, headers)
    return envelope


class ConfluentMessage(Protocol):
    """What :func:`read_confluent` uses of a ``confluent_kafka.Message``."""

    def value(self) -> bytes | None: ...
    def headers(self) -> RecordHeaders: ...
    def error(self) -> object: ...


class AiokafkaRecord(Protocol):
    """What :func:`read_aiokafka` uses of an ``aiokafka.ConsumerRecord`` (or
    a ``kafka-python`` one)."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> RecordHeaders: ...


def read_confluent(message: ConfluentMessage) -> Envelope:
    """:func:`read_envelope` of a ``confluent_kafka.Message`` (value and headers).
    A message carrying a consumer error (``message.error()``) raises
    :class:`InvalidEnvelope` naming the error: check ``error()`` first to
    handle errors yourself."""
    error = message.error()
    if error is not None:
        raise InvalidEnvelope(f"not a record but a consumer error: {error}")
    return read_envelope(message.value(), message.headers())


def read_aiokafka(record: AiokafkaRecord) -> Envelope:
    """:func:`read_envelope` of an ``aiokafka.ConsumerRecord`` (value and headers),
    consumed without a ``value_deserializer``."""
    return read_envelope(record.value, record.headers)


def _parse_json(value: bytes | bytearray | memoryview | str) -> object:
    """The value parsed: orjson (as the bridge's own parser: any depth up to
    1,024), or the standard library where a long number would lose digits
    in orjson."""
    if isinstance(value, memoryview):
        value = value.tobytes()
    if not isinstance(value, bytes | bytearray | str):
        raise TypeError(f"a record value is bytes or str, not {type(value).__name__}")
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
    if _LONG_NUMBER.search(raw) is not None:
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (ValueError, RecursionError):
            pass  # orjson decides: the same verdict (or nesting too deep for json)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEnvelope(f"not JSON: {exc}") from None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _from_newer_minor(version: object) -> bool:
    """Whether ``version`` is a 1.x newer than this module's, whose unknown
    fields are to be ignored. Raises for another major, or a malformed version."""
    if not isinstance(version, str):
        raise InvalidEnvelope(
            f"not an envelope: schema_version is a {type(version).__name__}, not a string"
        )
    match = _VERSION.fullmatch(version)
    if match is None:
        raise InvalidEnvelope(
            f"not an envelope: schema_version {version[:40]!r} is not 'major.minor'"
        )
    if int(match[1]) != _MAJOR:
        raise UnsupportedSchemaVersion(version)
    return int(match[2]) > _MINOR


def _json_kind(parsed: object) -> str:
    if parsed is None:
        return "null"
    if isinstance(parsed, bool):
        return "boolean"
    if isinstance(parsed, int | float):
        return "number"
    return "string" if isinstance(parsed, str) else "array"


def _describe(exc: ValidationError) -> str:
    problems = exc.errors(include_url=False, include_input=False, include_context=False)
    shown = "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or '(value)'}: {problem['msg']}"
        for problem in problems[:_MAX_PROBLEMS_SHOWN]
    )
    more = len(problems) - _MAX_PROBLEMS_SHOWN
    return f"not an envelope: {shown}" + (f" (and {more} more)" if more > 0 else "")


def _check_headers(
    envelope: Envelope | ActivityEnvelope,
    headers: Mapping[str, HeaderValue] | Iterable[tuple[str, HeaderValue]],
) -> None:
    expected = {
        "ce_id": envelope.event_id,
        "ce_type": _CE_TYPE_PREFIX + envelope.type,
        "ce_subject": envelope.task_id,
    }
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    seen: dict[str, HeaderValue] = {}
    for name, header in pairs:  # the last value of a name counts, as Kafka clients read it
        if name in expected:
            seen[name] = header
    for name, header in seen.items():
        text = _header_text(name, header)
        if text != expected[name]:
            shown = "null" if text is None else repr(text[:80])
            raise InvalidEnvelope(
                f"header {name} is {shown} but the body says {expected[name][:80]!r}: "
                "the record was altered, or not written by the bridge"
            )


def _header_text(name: str, header: HeaderValue) -> str | None:
    if header is None or isinstance(header, str):
        return header
    try:
        return bytes(header).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEnvelope(f"header {name} is not UTF-8") from None


def read_activity(
    value: bytes | bytearray | memoryview | str | None, headers: RecordHeaders = None
) -> ActivityEnvelope:
    """Validate one record of the activity topic into an :class:`ActivityEnvelope`
    (versions and headers as :func:`read_envelope`). A thread in parts gives one
    envelope per part: hand them to an :class:`ActivityAssembler`."""
    if value is None:
        raise InvalidEnvelope("a tombstone (a record without a value) is not an envelope")
    parsed = _parse_json(value)
    if not isinstance(parsed, dict):
        raise InvalidEnvelope(f"not an envelope: the value is a JSON {_json_kind(parsed)}")
    if _from_newer_minor(parsed.get("schema_version", SCHEMA_VERSION)):
        known = ActivityEnvelope.model_fields
        parsed = {name: field for name, field in parsed.items() if name in known}
    try:
        envelope = ActivityEnvelope.model_validate(parsed)
    except ValidationError as exc:
        raise InvalidEnvelope(_describe(exc)) from None
    if headers is not None:
        _check_headers(envelope, headers)
    return envelope


class ActivityAssembler:
    """Joins the parts of activity threads back into threads, per ``activity_id``.

    ``add(envelope)`` returns the thread (the parsed JSON, big integers exact)
    when ``envelope`` completes one, else ``None``: a whole record at once, a
    thread in parts at its last missing part. Delivery is at least once, so a
    part seen twice replaces itself, and a thread completed before is given
    again (deduplicate on ``activity_id`` if that matters). A thread whose
    reassembled text does not match its ``sha256`` raises
    :class:`InvalidEnvelope`. Pending threads are held in memory until
    complete: at most ``max_pending`` (the oldest is dropped beyond)."""

    def __init__(self, *, max_pending: int = 1000) -> None:
        self._pending: dict[str, dict[int, str]] = {}
        self._max_pending = max_pending

    @property
    def pending(self) -> int:
        """Threads with some parts seen, not all."""
        return len(self._pending)

    def add(self, envelope: ActivityEnvelope) -> Any:
        if envelope.parts == 1 and envelope.chunk is None:
            return envelope.data
        if envelope.chunk is None or envelope.part > envelope.parts:
            raise InvalidEnvelope(f"activity part {envelope.part}/{envelope.parts} without chunk")
        chunks = self._pending.get(envelope.activity_id)
        if chunks is None:
            chunks = self._pending[envelope.activity_id] = {}
            while len(self._pending) > self._max_pending:
                del self._pending[next(iter(self._pending))]
        chunks[envelope.part] = envelope.chunk
        if len(chunks) < envelope.parts:
            return None
        del self._pending[envelope.activity_id]
        text = "".join(chunks[index] for index in range(1, envelope.parts + 1))
        raw = text.encode("utf-8", "surrogatepass")
        if envelope.sha256 is not None and hashlib.sha256(raw).hexdigest() != envelope.sha256:
            raise InvalidEnvelope(f"activity {envelope.activity_id}: parts do not match sha256")
        return _parse_json(raw)
