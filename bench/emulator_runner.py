"""The emulator for one benchmark run, in its own process.

    python -m bench.emulator_runner '{"scenario": "wide", "params": {"tasks": 2000}}'

Prints one JSON line (base URL, organization, API key, agents, expected event
count) once every scenario task exists, then serves until SIGTERM. Streaming
tasks hold at pending until a contender subscribes (``start_on_subscribe``),
so every contender sees every event.

Steady scenario: with ``start_on_subscribe`` a task's clock starts when it is
subscribed, so a contender that subscribes to 10,000 streams within a second
would get its events in waves. Here each task instead starts at its own phase
slot (task i of n at ``i/n`` of the per-stream interval, on a clock that
started with the emulator), whatever the moment it was subscribed: the total
rate is the fixed one from the first cycle on.
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
from typing import Any

import orjson

from bridge.emulator.scenarios import preset
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, StreamSettings
from bridge.emulator.tasks import TaskRun
from bridge.gc_policy import GcPolicy
from bridge.observability.metrics import Metrics

__all__ = ["main"]


def _phase_subscribe(emu: Emulator, interval_s: float, streams: int) -> None:
    engine = emu.engine
    loop = asyncio.get_running_loop()
    started = loop.time()
    slots: dict[str, int] = {}

    def subscribe(run: TaskRun) -> None:
        run.subscribers += 1
        if not run.scheduled and not run.finished:
            slot = slots.setdefault(run.id, len(slots))
            phase = (slot % streams) * interval_s / streams
            delay = (phase - (loop.time() - started)) % interval_s
            engine.schedule(run, delay)

    engine.subscribe = subscribe  # type: ignore[method-assign]


async def serve(spec: dict[str, Any]) -> None:
    name = spec["scenario"]
    params = spec.get("params", {})
    scenario = preset(name, **params)
    settings = EmulatorSettings(
        port=int(spec.get("port", 0)),
        seed=int(spec.get("seed", 0)),
        stream=StreamSettings(start_on_subscribe=True, replay="none", history_limit=64),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The emulator stands in for the platform: its own garbage-collector pauses
    # (at 10,000 streams, ~400 ms full collections every few seconds) would land
    # between an event's emission stamp and its write, and be counted against
    # every contender. So it runs under the bridge's GC policy.
    gc_policy = GcPolicy(Metrics(), freeze_interval_s=1.0, full_interval_s=600.0)
    gc_policy.install()
    freezer = loop.create_task(gc_policy.run())
    async with Emulator(settings) as emu:
        if name == "steady":
            streams = int(params.get("streams", 10_000))
            _phase_subscribe(emu, streams / float(params.get("rate", 20_000)), streams)
        emu.start_scenario(scenario)
        tasks = scenario.task_count or 0
        while len(emu.engine.tasks) < tasks:  # noqa: ASYNC110 - the scenario fills it
            await asyncio.sleep(0.02)
        events = scenario.profile.events_per_task
        line = {
            "base_url": emu.base_url,
            "organization_id": emu.organization_id,
            "api_key": emu.api_key,
            "agent_ids": settings.agent_ids,
            "tasks": tasks,
            "events_per_task": events,
            "expected_events": tasks * events,
            "interval_s": scenario.profile.event_interval_s,
            "duration_s": math.ceil(events * scenario.profile.event_interval_s),
        }
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()
    freezer.cancel()
    gc_policy.uninstall()


def main() -> None:
    asyncio.run(serve(orjson.loads(sys.argv[1])))


if __name__ == "__main__":
    main()
