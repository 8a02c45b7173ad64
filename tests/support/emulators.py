"""Emulator set-ups that several test modules share."""

from __future__ import annotations

from bridge.emulator.settings import TaskProfile

__all__ = ["completing_tasks"]


def completing_tasks(events: int, **mix: float) -> TaskProfile:
    """Tasks that run *events* events quickly (``mix``: event kind -> weight) and
    all complete: no failure, error, stop or pause to branch on."""
    return TaskProfile(
        event_interval_s=0.002,
        events_per_task=events,
        fail_share=0.0,
        error_share=0.0,
        stop_share=0.0,
        pause_share=0.0,
        event_mix=mix,
    )
