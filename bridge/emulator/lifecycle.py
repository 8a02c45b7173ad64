"""The plan of one task: which steps it goes through, how long each waits, how it ends.

A plan is drawn once, when the task is created, from the task's own seeded
``random.Random``: the same seed and task id give the same plan. Steps:

    start      task_created (status pending)
    executing  task_updated (status executing)
    pause      task_updated (status paused)      } sometimes (pause_share), once,
    resume     task_updated (status executing)   } pause_s apart
    <body>     chunk, tool_call_request, tool_call_result, think, analyze,
               plan_updated, sub_agent_trigger, context_status, future_insight,
               or any other kind named in the profile's event_mix
    finish     task_updated + task_finished (the terminal status)

A non-streaming task keeps only the status steps; the body's delays are added to
``finish`` so it takes as long as a streaming one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bridge.emulator.settings import TaskProfile

__all__ = ["OUTCOMES", "Plan", "build_plan"]

OUTCOMES = ("completed", "failed", "error", "stopped")
_LIFECYCLE_EVENTS = 4  # task_created, task_updated(executing), task_updated(final), task_finished


@dataclass(slots=True)
class Plan:
    steps: list[str]
    delays: list[float]
    outcome: str
    pauses: bool

    @property
    def event_count(self) -> int:
        """Events this plan emits on a stream (finish emits two)."""
        return len(self.steps) + 1


def _outcome(rng: random.Random, profile: TaskProfile) -> str:
    draw = rng.random()
    for status, share in (
        ("failed", profile.fail_share),
        ("error", profile.error_share),
        ("stopped", profile.stop_share),
    ):
        if draw < share:
            return status
        draw -= share
    return "completed"


def _delay(rng: random.Random, profile: TaskProfile) -> float:
    base = profile.event_interval_s
    if base == 0.0:
        return 0.0
    jitter = profile.interval_jitter
    return base * rng.uniform(1.0 - jitter, 1.0 + jitter) if jitter else base


def build_plan(  # noqa: C901  (one branch per knob of the plan)
    rng: random.Random,
    profile: TaskProfile,
    *,
    streaming: bool,
    outcome: str | None = None,
    events: int | None = None,
) -> Plan:
    """Draw a task's plan. ``outcome`` and ``events`` force what is otherwise drawn."""
    final = outcome if outcome is not None else _outcome(rng, profile)
    if events is None:
        spread = profile.events_jitter
        scale = rng.uniform(1.0 - spread, 1.0 + spread) if spread else 1.0
        events = round(profile.events_per_task * scale)
    events = max(_LIFECYCLE_EVENTS + 1, events)
    pauses = rng.random() < profile.pause_share
    body_count = events - _LIFECYCLE_EVENTS - (2 if pauses else 0)
    if body_count < 1:
        pauses = False
        body_count = events - _LIFECYCLE_EVENTS

    mix = {kind: weight for kind, weight in profile.event_mix.items() if weight > 0}
    kinds = list(mix) or ["chunk"]
    weights = [mix[k] for k in kinds] if mix else [1.0]
    body: list[str] = []
    while len(body) < body_count:
        kind = rng.choices(kinds, weights)[0]
        if kind == "tool_call":
            if body_count - len(body) >= 2:
                body += ["tool_call_request", "tool_call_result"]
            else:
                body.append("chunk")
        else:
            body.append(kind)
    if pauses:
        at = rng.randint(0, len(body))
        body[at:at] = ["pause", "resume"]

    steps = ["start", "executing", *body, "finish"]
    delays = [0.0] + [_delay(rng, profile) for _ in steps[1:]]
    if pauses:
        # a pause lasts longer than the gap between two events, as a real one
        # would: the profile's pause_s, else three gaps
        resume_at = steps.index("resume")
        pause_s = profile.pause_s
        delays[resume_at] = delays[resume_at] * 3.0 if pause_s is None else pause_s
    if not streaming:
        kept_steps: list[str] = []
        kept_delays: list[float] = []
        carried = 0.0
        for step, delay in zip(steps, delays, strict=True):
            carried += delay
            if step in ("start", "executing", "pause", "resume", "finish"):
                kept_steps.append(step)
                kept_delays.append(carried)
                carried = 0.0
        steps, delays = kept_steps, kept_delays
    return Plan(steps=steps, delays=delays, outcome=final, pauses=pauses)
