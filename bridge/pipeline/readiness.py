"""Readiness of the Kafka side, sampled once a second: the sink is connected
and the delivery loop is neither failing nor stalled. A stalled broker is
noticed even when no send has failed yet (an idempotent producer retries
inside the client and reports nothing until it succeeds). The queue depth is
sampled here too, not set per record."""

from __future__ import annotations

import asyncio
from typing import Protocol

from bridge.observability.health import Health
from bridge.observability.metrics import Metrics
from bridge.pipeline.delivery import DeliveryLoop
from bridge.pipeline.queue import RecordQueue

__all__ = ["KafkaReadiness"]

#: records waiting and no ack for this long is a stall, at least
_MIN_STALL_S = 10.0


class Connected(Protocol):
    @property
    def connected(self) -> bool: ...


class KafkaReadiness:
    def __init__(
        self,
        sink: Connected,
        delivery: DeliveryLoop,
        queue: RecordQueue,
        health: Health,
        metrics: Metrics,
        *,
        request_timeout_ms: int,
    ) -> None:
        self._sink = sink
        self._delivery = delivery
        self._queue = queue
        self._health = health
        self._metrics = metrics
        self._stall_s = max(_MIN_STALL_S, 2 * request_timeout_ms / 1000 / 3)

    def check(self) -> None:
        delivery = self._delivery
        ok = self._sink.connected and delivery.healthy and not delivery.stalled(self._stall_s)
        self._health.set("kafka", ok, "" if ok else "sends failing or stalled; retrying")
        self._metrics.queue_depth.set(self._queue.qsize())

    async def run(self, period_s: float = 1.0) -> None:
        while True:
            self.check()
            await asyncio.sleep(period_s)
