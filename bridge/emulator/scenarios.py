"""Scenario presets: named workloads for demos, end-to-end tests and benchmarks.

    idle    no tasks of its own (the test default)
    demo    a trickle of varied tasks, forever, some pausing a while for a human
            (HITL) then resuming: the CLI default
    burst   400 streaming tasks x 100 events, all at once, back to back
    wide    2,000 concurrent streaming tasks x 20 events
    steady  N concurrent streams at a fixed total event rate for a fixed time,
            every event stamped with its emission time (latency measurement)

Benchmark presets have no failures, pauses, sub-tasks or jitter, so the event
count is exact: ``task_count * events_per_task``.
"""

from __future__ import annotations

import math
from typing import Any

from bridge.emulator.settings import ScenarioSettings, TaskProfile

__all__ = ["DEMO_PAUSE_S", "DEMO_PAUSE_SHARE", "PRESETS", "preset"]

PRESETS = ("idle", "demo", "burst", "wide", "steady")
#: The demo's share of tasks that pause (human in the loop), and for how long:
#: long enough to be seen paused, and to resume while the demo runs.
DEMO_PAUSE_SHARE = 0.05
DEMO_PAUSE_S = 20.0


def _bench_profile(events: int, interval: float, *, stamp: bool = False) -> TaskProfile:
    return TaskProfile(
        events_per_task=events,
        events_jitter=0.0,
        event_interval_s=interval,
        interval_jitter=0.0,
        pause_share=0.0,
        fail_share=0.0,
        error_share=0.0,
        stop_share=0.0,
        sub_task_share=0.0,
        stamp_emission=stamp,
    )


def preset(name: str, **params: Any) -> ScenarioSettings:
    """The scenario called ``name``. Parameters:

    burst:  tasks=400, events=100
    wide:   tasks=2000, events=20, interval_s=0.05
    steady: streams=10000, rate=20000 (events/s in total), duration_s=30
    demo:   interval_s=0.5 (mean gap between arrivals), max_active=200,
            pause_share=0.05 and pause_s=20 (tasks that wait for a human, then resume)
    """
    if name == "idle":
        return ScenarioSettings(task_count=0)
    if name == "demo":
        return ScenarioSettings(
            task_count=None,
            arrival_interval_s=float(params.get("interval_s", 0.5)),
            max_active=int(params.get("max_active", 200)),
            profile=TaskProfile(
                event_interval_s=0.15,
                events_per_task=40,
                pause_share=float(params.get("pause_share", DEMO_PAUSE_SHARE)),
                pause_s=float(params.get("pause_s", DEMO_PAUSE_S)),
            ),
        )
    if name == "burst":
        return ScenarioSettings(
            task_count=int(params.get("tasks", 400)),
            arrival_interval_s=0.0,
            streaming_share=1.0,
            profile=_bench_profile(int(params.get("events", 100)), 0.0),
        )
    if name == "wide":
        return ScenarioSettings(
            task_count=int(params.get("tasks", 2000)),
            arrival_interval_s=0.0,
            streaming_share=1.0,
            profile=_bench_profile(
                int(params.get("events", 20)), float(params.get("interval_s", 0.05))
            ),
        )
    if name == "steady":
        streams = int(params.get("streams", 10_000))
        rate = float(params.get("rate", 20_000))
        duration = float(params.get("duration_s", 30))
        interval = streams / rate  # each stream's gap so that all together make `rate`
        events = max(5, math.ceil(duration / interval))
        return ScenarioSettings(
            task_count=streams,
            # spread the starts over one interval so emissions do not come in waves
            arrival_interval_s=interval / streams,
            streaming_share=1.0,
            profile=_bench_profile(events, interval, stamp=True),
        )
    raise ValueError(f"unknown scenario preset {name!r}; known: {', '.join(PRESETS)}")
