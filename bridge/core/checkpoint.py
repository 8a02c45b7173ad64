"""A task's checkpoint: how far its events are *safely in Kafka*.

The last sequence of an unbroken run of acknowledged envelopes, with the SSE
id, the ``event_id`` and the status of that envelope, and the first event's id
(which tells a server that replays from the start apart from one that does
not). Written only after everything up to it was acknowledged, so resuming
from it never skips an event; at worst it repeats the few after it, with the
same ``event_id``. Where checkpoints are kept and who writes them is
``bridge.coordination``'s business; this is the value and its codec.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Checkpoint", "now"]

_VERSION = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    task_id: str
    agent_id: str | None
    organization_id: str | None
    #: the last sequence such that it and every one before it is in Kafka
    sequence: int
    #: the SSE id of the stream's last acknowledged event that carried one
    last_sse_id: str | None
    #: ``event_id`` of the envelope at ``sequence``
    last_event_id: str | None
    #: ``event_id`` of the last acknowledged envelope read from the stream: where
    #: a server that replays from the start is caught up
    last_stream_event_id: str | None
    #: ``event_id`` of the task's first streamed event: a replay starts with it
    first_event_id: str | None
    status: str | None
    #: the task's ``task_finished`` is in Kafka
    finished: bool
    #: wall-clock seconds of the write, for the retention of finished tasks
    written_at: float
    #: finished, but its activity thread is not yet in Kafka: whoever owns the
    #: task next publishes it (absent from older checkpoints: false)
    activity_due: bool = False

    @property
    def final(self) -> bool:
        """Nothing is left to publish for the task."""
        return self.finished and not self.activity_due

    def encode(self) -> bytes:
        # Written out, not dataclasses.asdict: this runs for every task with
        # progress each interval, and asdict was most of its cost.
        return orjson.dumps(
            {
                "v": _VERSION,
                "task_id": self.task_id,
                "agent_id": self.agent_id,
                "organization_id": self.organization_id,
                "sequence": self.sequence,
                "last_sse_id": self.last_sse_id,
                "last_event_id": self.last_event_id,
                "last_stream_event_id": self.last_stream_event_id,
                "first_event_id": self.first_event_id,
                "status": self.status,
                "finished": self.finished,
                "written_at": self.written_at,
                "activity_due": self.activity_due,
            }
        )

    @classmethod
    def decode(cls, value: bytes) -> Checkpoint | None:
        """``None`` for a value this version cannot read (skipped, never fatal)."""
        try:
            data: Any = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or data.get("v") != _VERSION:
            return None
        try:
            return cls(
                task_id=str(data["task_id"]),
                agent_id=data.get("agent_id"),
                organization_id=data.get("organization_id"),
                sequence=int(data["sequence"]),
                last_sse_id=data.get("last_sse_id"),
                last_event_id=data.get("last_event_id"),
                last_stream_event_id=data.get("last_stream_event_id"),
                first_event_id=data.get("first_event_id"),
                status=data.get("status"),
                finished=bool(data.get("finished")),
                written_at=float(data.get("written_at", 0.0)),
                activity_due=bool(data.get("activity_due")),
            )
        except (KeyError, TypeError, ValueError):
            return None


def now() -> float:
    """Wall-clock seconds, as checkpoints record them."""
    return time.time()
