"""A record read from one of the bridge's topics, decoded for showing: an
envelope (events topic, state topic), a dead letter (its ``dlq.*`` headers),
a tombstone, or anything else, kept raw.

The bytes come from whoever can write to the topic: nothing here trusts them.
A value that is not JSON, or JSON of the wrong shape, is a raw record, never
an exception.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.core.message import InMessage
from bridge.transforms.exact import needs_exact

__all__ = ["Kind", "View", "decode", "header_text", "parse_json"]

DLQ_REASON = "dlq.reason"


class Kind(enum.Enum):
    ENVELOPE = "envelope"
    DEAD_LETTER = "dead letter"
    TOMBSTONE = "tombstone"
    RAW = "raw"


@dataclass(frozen=True, slots=True)
class View:
    """One record and what ``tail`` reads from it."""

    message: InMessage
    kind: Kind
    #: the value parsed as JSON (``None`` when it is not JSON, or null)
    parsed: Any
    is_json: bool
    task_id: str | None = None
    agent_id: str | None = None
    type: str | None = None
    status: str | None = None

    def header(self, name: str) -> str | None:
        return header_text(self.message, name)


def header_text(message: InMessage, name: str) -> str | None:
    """The last value of header *name* as text (undecodable bytes replaced)."""
    found = [value for key, value in message.headers if key == name]
    return found[-1].decode("utf-8", "replace") if found else None


def _key_text(message: InMessage) -> str | None:
    key = message.key
    return key.decode("utf-8", "replace") if key is not None else None


def parse_json(value: bytes) -> tuple[bool, Any]:
    """(is JSON, the value). orjson, unless it would turn an integer past 64
    bits (which the bridge carries exactly) into a float: then the standard
    library, which also gets what orjson refuses."""
    if not needs_exact(value):
        try:
            return True, orjson.loads(value)
        except orjson.JSONDecodeError:
            pass
    try:
        return True, json.loads(value)
    except (ValueError, RecursionError):
        return False, None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def decode(message: InMessage) -> View:
    value = message.value
    if value is None:
        return View(message, Kind.TOMBSTONE, None, False, task_id=_key_text(message))
    is_json, parsed = parse_json(value)
    if any(key == DLQ_REASON for key, _ in message.headers):
        task = header_text(message, "dlq.task_id") or _key_text(message)
        return View(message, Kind.DEAD_LETTER, parsed, is_json, task_id=task)
    if (
        isinstance(parsed, dict)
        and isinstance(parsed.get("schema_version"), str)
        and isinstance(parsed.get("task_id"), str)
        and isinstance(parsed.get("type"), str)
    ):
        return View(
            message,
            Kind.ENVELOPE,
            parsed,
            True,
            task_id=parsed["task_id"],
            agent_id=_text(parsed.get("agent_id")),
            type=parsed["type"],
            status=_text(parsed.get("status")),
        )
    # not an envelope: the task its key names (the bridge keys every topic by task id)
    return View(message, Kind.RAW, parsed, is_json, task_id=_key_text(message))
