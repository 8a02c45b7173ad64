"""A "follow this task now" note, written to the coordination topic.

A task the bridge itself created (a ``create`` command) should stream at once,
not at the next listing, and on whichever replica owns it. The creating
replica writes this note keyed by the task id into the coordination topic's
partition ``partition_for(task_id)``; the replica that owns that partition is
the one consuming it (its ownership group reads the topic), and starts
following the task. Written in the transaction of the command's reply, so
there is no note without a created task. The owner deletes the note (a
tombstone: the topic is compacted) once it acted on it, and ignores notes
older than a bound: a replica that takes a partition over reads the notes
since the last commit again, and a listing finds those tasks anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.core.values import str_or_none

__all__ = ["FollowHint"]

_VERSION = 1
#: a note larger than this is not ours (the coordination topic is not an input)
_MAX_BYTES = 4096


@dataclass(frozen=True, slots=True)
class FollowHint:
    task_id: str
    agent_id: str | None
    organization_id: str | None
    status: str | None
    events_streaming: bool
    #: wall-clock seconds when it was written
    written_at: float

    @classmethod
    def of(cls, task: dict[str, Any]) -> FollowHint | None:
        """From the platform's answer to a create; ``None`` without an id."""
        task_id = str_or_none(task.get("id"))
        if not task_id:
            return None
        return cls(
            task_id=task_id,
            agent_id=str_or_none(task.get("agent_id")),
            organization_id=str_or_none(task.get("organization_id")),
            status=str_or_none(task.get("status")),
            events_streaming=task.get("events_streaming") is not False,
            written_at=time.time(),
        )

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": _VERSION,
                "kind": "follow",
                "task_id": self.task_id,
                "agent_id": self.agent_id,
                "organization_id": self.organization_id,
                "status": self.status,
                "events_streaming": self.events_streaming,
                "written_at": self.written_at,
            }
        )

    @classmethod
    def decode(cls, value: bytes | None) -> FollowHint | None:
        """``None`` for anything that is not a note this version reads."""
        if value is None or len(value) > _MAX_BYTES:
            return None
        try:
            data: Any = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or data.get("v") != _VERSION or data.get("kind") != "follow":
            return None
        task_id = str_or_none(data.get("task_id"))
        written_at = data.get("written_at")
        if not task_id or not isinstance(written_at, int | float):
            return None
        return cls(
            task_id=task_id,
            agent_id=str_or_none(data.get("agent_id")),
            organization_id=str_or_none(data.get("organization_id")),
            status=str_or_none(data.get("status")),
            events_streaming=data.get("events_streaming") is not False,
            written_at=float(written_at),
        )

    def item(self) -> dict[str, Any]:
        """As a listing item, which is what discovery and the supervisor take."""
        return {
            "id": self.task_id,
            "agent_id": self.agent_id,
            "organization_id": self.organization_id,
            "status": self.status,
            "events_streaming": self.events_streaming,
        }

    def age_s(self) -> float:
        return time.time() - self.written_at
