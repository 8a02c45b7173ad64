"""``xpander-bridge demo``: the emulator, the embedded broker and the bridge in
one process tree, with a live summary in the terminal until Ctrl-C.

Nothing here is demo-only logic: the bridge is the same ``Bridge`` that
``run`` starts, configured to point at the emulator and the broker (with
idempotence off, since the embedded broker has none).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections import defaultdict
from typing import Any, TextIO

from prometheus_client.metrics import MetricWrapperBase

from bridge.app import Bridge
from bridge.config import BridgeConfig
from bridge.emulator import Emulator
from bridge.emulator.scenarios import preset
from bridge.emulator.settings import EmulatorSettings
from bridge.kafka.embedded import EmbeddedBroker
from bridge.observability.logging import configure_logging

__all__ = ["run_demo"]


def _samples(metric: MetricWrapperBase, label: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                totals[sample.labels.get(label, "")] += sample.value
    return totals


def demo_config(emu: Emulator, bootstrap_servers: str, http_port: int) -> BridgeConfig:
    return BridgeConfig.model_validate(
        {
            "platform": {
                "base_url": emu.base_url,
                "api_key": emu.api_key,
                "organization_id": emu.organization_id,
            },
            "discovery": {"agent_ids": list(emu.settings.agent_ids), "interval_s": 1.0},
            # idempotent and transactional (the defaults): the embedded broker has both
            "kafka": {"bootstrap_servers": [bootstrap_servers]},
            "http": {"host": "127.0.0.1", "port": http_port},
            "logging": {"format": "text", "level": "WARNING"},
        }
    )


class Summary:
    """Renders the once-a-second view from the bridge's own metrics."""

    def __init__(self, bridge: Bridge, emu: Emulator, out: TextIO) -> None:
        self._bridge = bridge
        self._emu = emu
        self._out = out
        self._last: dict[str, float] = {}
        self._last_time = time.monotonic()
        self._tty = out.isatty()
        self.total_published = 0.0

    def render(self) -> str:
        metrics = self._bridge.metrics
        now = time.monotonic()
        received = _samples(metrics.sse_events_received.metric, "event_type")
        elapsed = max(1e-6, now - self._last_time)
        rates = {t: (received[t] - self._last.get(t, 0)) / elapsed for t in received}
        self._last, self._last_time = received, now
        published = _samples(metrics.envelopes_published.metric, "topic")
        self.total_published = sum(published.values())
        finished = _samples(metrics.tasks_finished.metric, "status")
        lines = [
            f"xpander-bridge demo   emulator {self._emu.base_url}   "
            f"kafka {self._bridge.config.kafka.bootstrap_servers[0]}   "
            f"metrics http://127.0.0.1:{self._bridge.http.port if self._bridge.http else '-'}"
            "/metrics",
            "",
            f"events/s {sum(rates.values()):8.0f}   published {self.total_published:10.0f}   "
            f"queue {int(self._bridge.queue.qsize()):6d}/{self._bridge.queue.maxsize}   "
            f"streams {int(_gauge(metrics.active_streams)):5d}",
            "",
            "events/s by type:",
        ]
        for event_type, rate in sorted(rates.items(), key=lambda item: -item[1])[:12]:
            lines.append(f"  {event_type:<24} {rate:8.1f}")
        lines.append("")
        lines.append("tasks finished by status: " + _inline(finished))
        lines.append("emulator tasks by status: " + _inline(self._emu.stats()["tasks_by_status"]))
        lines.append("")
        lines.append("Ctrl-C stops: streams close, the queue drains, the producer flushes.")
        return "\n".join(lines)

    def show(self) -> None:
        text = self.render()
        if self._tty:
            self._out.write("\x1b[H\x1b[2J" + text + "\n")
        else:
            first, *_ = text.splitlines()[2:3] or [""]
            self._out.write(first.strip() + "\n")
        self._out.flush()


def _gauge(metric: MetricWrapperBase) -> float:
    for family in metric.collect():
        for sample in family.samples:
            return float(sample.value)
    return 0.0


def _inline(counts: dict[str, Any]) -> str:
    return "  ".join(f"{k}={int(v)}" for k, v in sorted(counts.items())) or "-"


async def run_demo(
    *, duration_s: float | None = None, http_port: int = 8080, out: TextIO | None = None
) -> int:
    """Run until Ctrl-C/SIGTERM (or ``duration_s``); returns the exit code."""
    stream = out or sys.stdout
    configure_logging("WARNING", "text")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    emulator_settings = EmulatorSettings(scenario=preset("demo", interval_s=0.05, max_active=300))
    async with EmbeddedBroker() as broker, Emulator(emulator_settings) as emu:
        bridge = Bridge(demo_config(emu, broker.bootstrap_servers, http_port))
        await bridge.start()
        emu.start_scenario(emu.settings.scenario)
        summary = Summary(bridge, emu, stream)
        started = time.monotonic()
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await stop.wait()
                summary.show()
                if duration_s is not None and time.monotonic() - started >= duration_s:
                    break
        finally:
            stream.write("\nstopping: draining the queue and flushing the producer...\n")
            report = await bridge.shutdown()
        published = sum(_samples(bridge.metrics.envelopes_published.metric, "topic").values())
        stream.write(
            f"stopped in {report.seconds:.2f}s, {published:.0f} envelopes "
            f"published, {report.undelivered} undelivered\n"
        )
        return 0 if report.clean else 1
