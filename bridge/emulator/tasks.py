"""One emulated task: its wire JSON, its emitted history, and the state its
lifecycle steps need.

The history is a list of ``EventRecord`` whose SSE frame is encoded once, at
emission: every subscriber, every replay and every inspection reuses the same
bytes, so fan-out to N subscribers costs N slices and N writes, not N encodes.
Subscribers do not own queues; each keeps a cursor (the last SSE id it sent) and
reads ``frames_after(cursor)``. A trimmed history only moves ``base_seq``.

Besides events, the history holds injected entries (``control.inject_raw``,
``inject_huge_line``): bytes a test chose, at the position they were injected.
Each takes the next seq as its slot, so cursors and Last-Event-ID replay treat
it like an event, but no ``id:`` line is written for it: the next event's id
skips that number. Inspection (``emitted``) leaves them out.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.emulator.lifecycle import Plan
from bridge.emulator.settings import TaskProfile

__all__ = ["HUGE_LINE", "INJECTED", "RAW", "EmittedEvent", "EventRecord", "TaskRun"]

#: ``EventRecord.type`` of injected entries (no event type can look like these)
RAW = "(raw)"
HUGE_LINE = "(huge line)"
INJECTED = frozenset({RAW, HUGE_LINE})


class EventRecord:
    """One emitted event: ``frame`` is exactly what goes on the wire (a malformed
    frame injected before it included); the JSON body is ``frame[body_start:-2]``.
    A ``HUGE_LINE`` entry has an empty frame and ``huge`` = (size, fill): its
    bytes are generated at each write, never stored."""

    __slots__ = ("body_start", "emitted_at", "frame", "huge", "malformed", "seq", "time", "type")

    def __init__(
        self,
        seq: int,
        type_: str,
        time: str,
        *,
        emitted_at: float,
        frame: bytes,
        body_start: int,
        malformed: bytes | None,
    ) -> None:
        self.seq = seq
        self.type = type_
        self.time = time
        self.emitted_at = emitted_at
        self.frame = frame
        self.body_start = body_start
        self.malformed = malformed
        self.huge: tuple[int, bytes] | None = None  # set by Engine.inject only

    @property
    def body(self) -> bytes:
        return self.frame[self.body_start : -2]


@dataclass(frozen=True, slots=True)
class EmittedEvent:
    """What inspection returns for one event: its type, the SSE id it carried
    (``None`` when ids are off), its envelope time, and the exact JSON sent."""

    task_id: str
    type: str
    id: str | None
    time: str
    emitted_at: float
    json: bytes
    malformed_before: bytes | None

    @property
    def payload(self) -> dict[str, Any]:
        value = orjson.loads(self.json)
        assert isinstance(value, dict)
        return value

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "type": self.type,
            "id": self.id,
            "time": self.time,
            "emitted_at": self.emitted_at,
            "json": self.json.decode(),
            "malformed_before": self.malformed_before.decode() if self.malformed_before else None,
        }


class TaskRun:
    """State of one task. Mutated only by the engine, on the event loop."""

    def __init__(
        self,
        *,
        wire: dict[str, Any],
        streaming: bool,
        profile: TaskProfile,
        rng: random.Random,
        fault_rng: random.Random,
        plan: Plan,
        is_child: bool = False,
    ) -> None:
        self.id: str = wire["id"]
        self.wire = wire
        self.streaming = streaming
        self.profile = profile
        self.rng = rng
        self.fault_rng = fault_rng
        self.plan = plan
        self.is_child = is_child
        self.step_index = 0
        self.scheduled = False
        self.started = False
        self.finished = False
        self.lingers = False  # ended under linger_after_end: no task_finished, streams stay
        self.held = False  # paused through the API
        #: left out of listings (a listing that lags a create); found by id only
        self.unlisted = False
        self.history: list[EventRecord] = []
        self.base_seq = 1  # seq of history[0]
        self.last_seq = 0
        self.waiters: list[asyncio.Future[None]] = []
        self.subscribers = 0
        self.connections = 0
        self.drops = 0
        self.stalls = 0
        self.injected = 0  # injected entries appended (raw and huge lines)
        self.has_huge = False  # a huge line was injected: streams take the slow path
        self.finished_future: asyncio.Future[None] | None = None
        # what the body steps need to stay coherent
        self.open_call: dict[str, Any] | None = None
        self.calls = 0
        self.plan_progress = 0
        self.context_used = 1200
        self.children = 0

    # -- history ------------------------------------------------------------

    def append(self, record: EventRecord, limit: int) -> None:
        history = self.history
        history.append(record)
        # trim in slabs so the cost is amortised, not one list shift per event
        if len(history) > limit + max(64, limit // 4):
            cut = len(history) - limit
            del history[:cut]
            self.base_seq += cut

    def frames_after(self, seq: int) -> list[EventRecord]:
        """Records with an SSE id above ``seq`` (all kept ones if ``seq`` is older)."""
        start = seq + 1 - self.base_seq
        if start <= 0:
            return self.history[:] if self.history else []
        return self.history[start:]

    def wake(self) -> None:
        waiters = self.waiters
        if waiters:
            self.waiters = []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def wait(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        return fut

    def emitted(self) -> list[EmittedEvent]:
        return [
            EmittedEvent(
                task_id=self.id,
                type=r.type,
                id=str(r.seq) if r.frame.startswith(b"id: ", len(r.malformed or b"")) else None,
                time=r.time,
                emitted_at=r.emitted_at,
                json=r.body,
                malformed_before=r.malformed,
            )
            for r in self.history
            if r.type not in INJECTED
        ]

    # -- views --------------------------------------------------------------

    @property
    def status(self) -> str:
        return str(self.wire["status"])

    @property
    def agent_id(self) -> str:
        return str(self.wire["agent_id"])

    @property
    def user_id(self) -> str | None:
        user = (self.wire.get("input") or {}).get("user")
        return user.get("id") if isinstance(user, dict) else None

    def list_item(self) -> dict[str, Any]:
        wire = self.wire
        return {
            "id": self.id,
            "agent_id": wire["agent_id"],
            "user_id": self.user_id,
            "parent_task_id": wire.get("parent_execution"),
            "triggering_agent_id": wire.get("triggering_agent_id"),
            "organization_id": wire["organization_id"],
            "status": wire["status"],
            "internal_status": wire.get("internal_status"),
            "created_at": wire["created_at"],
            "updated_at": wire.get("updated_at"),
            "source_node_type": wire.get("source"),
            "result": wire.get("result"),
            "title": wire.get("title"),
            "execution_kind": None,
            "process": None,
            "conversation_kind": None,
        }
