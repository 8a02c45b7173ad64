"""Liveness and readiness, as plain state the HTTP endpoint reads.

Liveness means the event loop makes progress: a heartbeat task stamps the
time every second, and ``/livez`` fails when the stamp is stale (a blocked
loop cannot answer on time). Readiness means the bridge can do its job: every
enabled direction reports its own condition and all must hold.
"""

from __future__ import annotations

import asyncio
import time

from bridge.observability.metrics import Metrics

__all__ = ["Health"]


class Health:
    def __init__(self, metrics: Metrics, *, stale_after_s: float = 10.0) -> None:
        self._metrics = metrics
        self._stale_after = stale_after_s
        self._beat = time.monotonic()
        self._conditions: dict[str, tuple[bool, str]] = {}

    def set(self, name: str, ok: bool, detail: str = "") -> None:
        """Record one readiness condition (e.g. ``kafka``, ``platform``)."""
        self._conditions[name] = (ok, detail)
        self._metrics.ready.set(1 if self.ready else 0)

    @property
    def ready(self) -> bool:
        return bool(self._conditions) and all(ok for ok, _ in self._conditions.values())

    def conditions(self) -> dict[str, dict[str, object]]:
        return {name: {"ok": ok, "detail": d} for name, (ok, d) in self._conditions.items()}

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._beat < self._stale_after

    async def heartbeat(self, period_s: float = 1.0) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(period_s)
