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
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from bridge.emulator.content import make_id
from bridge.emulator.scenarios import preset
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, ScenarioSettings, StreamSettings
from bridge.emulator.tasks import TaskRun
from bridge.gc_policy import GcPolicy
from bridge.observability.metrics import Metrics

__all__ = ["HISTORY_SCENARIOS", "live_task_ids", "main"]

#: scenarios of live tasks arriving over time over a seeded history: ``live``
#: is ``history`` with none, the baseline its discovery cost is compared with
HISTORY_SCENARIOS = ("history", "live")

#: the id namespace of the first scenario an emulator starts (its tasks' ids)
_FIRST_SCENARIO = "scenario0"


def live_task_ids(count: int, seed: int = 0) -> list[str]:
    """The ids the ``history`` scenario's live tasks get (not the history's)."""
    return [make_id(seed, _FIRST_SCENARIO, n) for n in range(count)]


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


def history_scenario(params: dict[str, Any]) -> ScenarioSettings:
    """The live tasks of the ``history`` scenario (the history itself is a setting)."""
    live = int(params.get("live", 1000))
    wide = preset(
        "wide",
        tasks=live,
        events=int(params.get("events", 20)),
        interval_s=float(params.get("interval_s", 1.0)),
    )
    return wide.model_copy(
        update={
            "arrival_interval_s": float(params.get("arrival_s", 30.0)) / max(1, live),
            "profile": wide.profile.model_copy(update={"stamp_emission": True}),
        }
    )


class _Listings:
    """Counts listing requests per kind (the inbox counts only their bytes) and
    starts ``scenario`` once ``agents`` listings were answered."""

    def __init__(self, emu: Emulator, scenario: ScenarioSettings | None, agents: int) -> None:
        self.requests: Counter[str] = Counter()
        #: (wall time, full listing or not, body bytes) of every listing answered
        self.timeline: list[tuple[float, bool, int]] = []
        self.started_at: float | None = None
        self._emu = emu
        self._scenario = scenario
        self._agents = agents
        api = emu.api
        answer = api._listing

        def listing(name: str, query: Any, items: list[Any]) -> Any:
            status = query.get("status")
            self.requests[name if status is None else f"{name} status={status}"] += 1
            if self._scenario is not None and sum(self.requests.values()) >= self._agents:
                self.started_at = time.time()
                namespace = self._emu.start_scenario(self._scenario)
                assert namespace == _FIRST_SCENARIO, namespace  # live_task_ids relies on it
                self._scenario = None
            before = sum(self._emu.inbox.list_bytes.values())
            response = answer(name, query, items)
            sent = sum(self._emu.inbox.list_bytes.values()) - before
            self.timeline.append((time.time(), status is None, sent))
            return response

        api._listing = listing  # type: ignore[method-assign]

    def report(self) -> dict[str, Any]:
        created = {
            run.id: datetime.fromisoformat(run.wire["created_at"]).timestamp()
            for run in self._emu.engine.tasks.values()
            if run.wire.get("source") == "scenario"
        }
        return {
            "list_requests": dict(self.requests),
            "list_bytes": dict(self._emu.inbox.list_bytes),
            "live_started_at": self.started_at,
            "timeline": self.timeline,
            "created_at": created,
        }


async def serve(spec: dict[str, Any]) -> None:
    name = spec["scenario"]
    params = spec.get("params", {})
    history = name in HISTORY_SCENARIOS
    stream = StreamSettings(start_on_subscribe=True, replay="none", history_limit=64)
    settings = EmulatorSettings(
        port=int(spec.get("port", 0)),
        seed=int(spec.get("seed", 0)),
        stream=stream,
    )
    if history:
        scenario = history_scenario(params)
        agents = int(params.get("agents", 4))
        total = int(params.get("history", 100_000)) if name == "history" else 0
        settings = settings.model_copy(
            update={
                "agent_ids": [f"agent-emulator-{i + 1}" for i in range(agents)],
                "history_per_agent": math.ceil(total / agents),
                # the history counts toward max_tasks: none of it may be evicted
                "stream": stream.model_copy(
                    update={"max_tasks": total + agents + 2 * (scenario.task_count or 0)}
                ),
            }
        )
    else:
        scenario = preset(name, **params)
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
        tasks = scenario.task_count or 0
        listings = _Listings(emu, scenario if history else None, len(settings.agent_ids))
        if not history:
            emu.start_scenario(scenario)
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
        if spec.get("report_path"):
            report = orjson.dumps(listings.report())
            await asyncio.to_thread(Path(spec["report_path"]).write_bytes, report)
    freezer.cancel()
    gc_policy.uninstall()


def main() -> None:
    asyncio.run(serve(orjson.loads(sys.argv[1])))


if __name__ == "__main__":
    main()
