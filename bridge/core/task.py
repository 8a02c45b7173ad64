"""What the bridge knows of one followed task.

A ``TaskState`` is created when a task starts being followed (from a listing,
or from its checkpoint after an ownership move) and is owned by that task's
worker (its stream or poller). The transform advances it (``sequence``,
status, identity); delivery acknowledgements move ``acks.done`` and the
``acked_*`` fields; the checkpointer records those. It lives here, not in a
component, because all three meet on it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from bridge.core.acks import OrderedAcks
from bridge.core.checkpoint import Checkpoint

__all__ = ["PendingEnvelope", "TaskState"]


class PendingEnvelope(NamedTuple):
    """An envelope handed out but not yet covered by ``acks.done``: what a
    checkpoint records once it is."""

    sequence: int
    sse_id: str | None
    event_id: str
    status: str | None
    #: read from the task's stream itself (not a resync, poll or report)
    from_stream: bool


@dataclass(slots=True)
class TaskState:
    """Identity, sequence and delivery progress of one task."""

    task_id: str
    agent_id: str | None
    organization_id: str | None
    #: the last sequence handed out (the next envelope gets sequence + 1)
    sequence: int = 0
    status: str | None = None
    #: a ``task_finished`` envelope was emitted (from the stream, a poll or a resync)
    finished: bool = False
    #: the task ended and its activity thread is wanted but not yet in Kafka
    #: (a checkpoint that says so is not final: the next owner publishes it)
    activity_due: bool = False
    #: per-sequence delivery acks; ``acks.done`` is the last sequence safely in Kafka
    acks: OrderedAcks = field(default_factory=lambda: OrderedAcks(start=1))
    key: bytes = b""
    ce_source: bytes = b""
    #: ``event_id`` of the task's first streamed event (a replay starts with it)
    first_event_id: str | None = None
    #: what the envelope at ``acks.done`` carried: what a checkpoint records
    acked_sse_id: str | None = None
    acked_event_id: str | None = None
    #: ``event_id`` of the last acknowledged envelope read from the stream itself
    acked_stream_event_id: str | None = None
    acked_status: str | None = None
    #: the sequence covered by a checkpoint Kafka acknowledged
    checkpointed: int = 0
    checkpoint_final: bool = False
    pending: deque[PendingEnvelope] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.key = self.task_id.encode()
        self._set_source()

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> TaskState:
        state = cls(checkpoint.task_id, checkpoint.agent_id, checkpoint.organization_id)
        state.resume(checkpoint)
        return state

    def resume(self, checkpoint: Checkpoint) -> None:
        """Continue where a checkpoint left off: the sequence goes on, never from 0."""
        self.sequence = self.checkpointed = checkpoint.sequence
        self.acks = OrderedAcks(start=checkpoint.sequence + 1)
        self.acked_sse_id = checkpoint.last_sse_id
        self.acked_event_id = checkpoint.last_event_id
        self.acked_stream_event_id = checkpoint.last_stream_event_id
        self.acked_status = self.status = checkpoint.status
        self.first_event_id = checkpoint.first_event_id
        self.finished = checkpoint.finished
        self.activity_due = checkpoint.finished and checkpoint.activity_due
        self.checkpoint_final = checkpoint.finished and not checkpoint.activity_due
        self.learn(checkpoint.agent_id, checkpoint.organization_id)

    @property
    def resumed(self) -> bool:
        """Picked up from a checkpoint (its sequence did not start at 0)."""
        return self.sequence > 0

    def track(self, pending: PendingEnvelope) -> None:
        """An envelope was handed out under ``pending.sequence``."""
        self.acks.track(pending.sequence)
        self.pending.append(pending)

    def delivered(self, sequence: int) -> None:
        """Every record of envelope ``sequence`` is in Kafka."""
        done = self.acks.ack(sequence)
        pending = self.pending
        while pending and pending[0].sequence <= done:
            envelope = pending.popleft()
            if envelope.sse_id is not None:
                self.acked_sse_id = envelope.sse_id
            self.acked_event_id = envelope.event_id
            if envelope.from_stream:
                self.acked_stream_event_id = envelope.event_id
            if envelope.status is not None:
                self.acked_status = envelope.status

    def learn(self, agent_id: object, organization_id: object) -> None:
        """Fill identity fields the discovery listing did not have."""
        changed = False
        if isinstance(agent_id, str) and agent_id and not self.agent_id:
            self.agent_id, changed = agent_id, True
        if isinstance(organization_id, str) and organization_id and not self.organization_id:
            self.organization_id, changed = organization_id, True
        if changed:
            self._set_source()

    def _set_source(self) -> None:
        self.ce_source = (
            f"/xpander/organizations/{self.organization_id or '-'}/agents/{self.agent_id or '-'}"
        ).encode()
