"""Fault injection: which REST calls fail or lag, which stream connections drop or
stall. The knobs are ``FaultSettings``; this holds their run-time state (the
countdown of ``next_n`` rules) and makes every decision from seeded generators:
REST decisions in call order, stream decisions per (task id, connection number),
so a rerun with the same seed and the same calls gets the same faults.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.emulator.settings import FaultSettings, HttpFaultRule
from bridge.emulator.tasks import TaskRun

__all__ = ["FaultInjector", "HttpFault", "StreamFaults"]


@dataclass(frozen=True, slots=True)
class HttpFault:
    status: int
    retry_after: float | None
    hang: bool = False
    oversize: int | None = None  # answer as usual, padded to this many bytes
    content_length: bool = True


@dataclass(slots=True)
class StreamFaults:
    """Per-connection limits: drop or stall once this many events were sent."""

    drop_after: int | None
    stall_after: int | None


class FaultInjector:
    def __init__(self, settings: FaultSettings, seed: int) -> None:
        self._seed = seed
        self._rng = random.Random(f"{seed}/http")
        self.settings = settings
        self._remaining = [rule.next_n for rule in settings.http]
        self.injected: dict[int, int] = {}  # status -> how many answers were faked
        self.hung = 0  # calls left unanswered by a `hang` rule
        self.oversized = 0  # answers padded by an `oversize_bytes` rule

    def replace(self, settings: FaultSettings) -> None:
        """New knobs take effect for the next call and the next connection."""
        self.settings = settings
        self._remaining = [rule.next_n for rule in settings.http]

    def http_fault(
        self, kind: str, *, name: str | None = None, path_id: str | None = None
    ) -> HttpFault | None:
        """The fault for one call of ``kind`` (``name``: the finer endpoint name,
        e.g. ``list_tasks`` for a ``list``; ``path_id``: the id its path names)."""
        for i, rule in enumerate(self.settings.http):
            if _matches(rule, kind, name, path_id) and self._fires(i, rule):
                return self._fault(rule)
        return None

    def _fires(self, i: int, rule: HttpFaultRule) -> bool:
        if self._remaining[i] > 0:
            self._remaining[i] -= 1
            return True
        return bool(rule.share) and self._rng.random() < rule.share

    def _fault(self, rule: HttpFaultRule) -> HttpFault:
        if rule.hang:
            self.hung += 1
            return HttpFault(rule.status, None, hang=True)
        if rule.oversize_bytes is not None:
            self.oversized += 1
            return HttpFault(
                200, None, oversize=rule.oversize_bytes, content_length=rule.oversize_content_length
            )
        self.injected[rule.status] = self.injected.get(rule.status, 0) + 1
        retry_after = rule.retry_after_s
        if retry_after is None and rule.status == 429:
            retry_after = 1.0
        return HttpFault(rule.status, retry_after)

    def delay(self, kind: str, name: str | None = None) -> float:
        s = self.settings
        if s.delay_s and _targets(s.delay_endpoints, kind, name):
            return s.delay_s
        return 0.0

    def remaining(self) -> list[int]:
        return list(self._remaining)

    def for_stream(self, run: TaskRun, connection: int) -> StreamFaults:
        s = self.settings
        rng = random.Random(f"{self._seed}/{run.id}/connection/{connection}")
        drop_draw, stall_draw = rng.random(), rng.random()
        drop = s.drop_after_events
        if drop is not None and (
            drop_draw >= s.drop_share
            or (s.drop_max_per_task is not None and run.drops >= s.drop_max_per_task)
        ):
            drop = None
        stall = s.stall_after_events
        if stall is not None and (
            stall_draw >= s.stall_share
            or (s.stall_max_per_task is not None and run.stalls >= s.stall_max_per_task)
        ):
            stall = None
        return StreamFaults(drop_after=drop, stall_after=stall)


def _matches(rule: HttpFaultRule, kind: str, name: str | None, path_id: str | None) -> bool:
    if not _targets(rule.endpoints, kind, name):
        return False
    if rule.ids is not None and path_id not in rule.ids:
        return False
    # a stream is not one JSON body: there is nothing to pad
    return not (kind == "stream" and rule.oversize_bytes is not None and not rule.hang)


def _targets(endpoints: Sequence[str], kind: str, name: str | None) -> bool:
    return "*" in endpoints or kind in endpoints or (name is not None and name in endpoints)
