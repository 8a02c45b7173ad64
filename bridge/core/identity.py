"""Event identity: the deterministic ``event_id`` of an envelope.

The same event read twice (a replay, a redelivery after a crash) gets the
same id, so consumers can deduplicate. With server ids the SSE id decides;
without, the frame's bytes (type, time, content) do. Resyncs, polls and
reports derive theirs from what made them (status and time).
"""

from __future__ import annotations

import hashlib

__all__ = ["event_id", "event_id_for", "frame_id_material"]


def frame_id_material(frame: bytes, sse_id: str | None) -> bytes:
    """With server ids the id decides; without, the frame's bytes."""
    return b"id\x00" + sse_id.encode() if sse_id is not None else b"frame\x00" + frame


def event_id(task_id: str, material: bytes) -> str:
    digest = hashlib.blake2b(material, digest_size=16, person=b"xpander-bridge1")
    digest.update(task_id.encode())
    return digest.hexdigest()


def event_id_for(task_id: str, frame: bytes, sse_id: str | None) -> str:
    """The ``event_id`` a frame gets, without building its envelope (replay skipping)."""
    return event_id(task_id, frame_id_material(frame, sse_id))
