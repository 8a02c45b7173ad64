"""The per-task cost of the activity topic: one activity-log fetch through the
bridge's own client (aiohttp, answer checked as a JSON object) plus building its
record(s), at typical and large thread sizes.

The emulator runs in a thread of its own with its own event loop, so the CPU
figure (``time.thread_time`` of the bridge's thread) is the bridge's alone;
wall time includes the emulator building the thread and the loopback transfer.

    .venv/bin/python -m bench.activity_cost [--fetches 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from concurrent.futures import Future

from bridge.config import PlatformConfig, StreamsConfig
from bridge.core.task import TaskState
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings
from bridge.observability.metrics import Metrics
from bridge.platform.client import PlatformClient
from bridge.transforms.activity import ActivityRecords

SIZES = (0, 64 * 1024, 1024 * 1024, 8 * 1024 * 1024)
AGENT = "agent-emulator-1"


def _serve(ready: Future[Emulator], stop: threading.Event) -> None:
    async def main() -> None:
        async with Emulator(EmulatorSettings()) as emu:
            run = emu.engine.create_task(AGENT, streaming=False, text="measure it")
            await emu.wait_finished(run.id)
            ready.set_result(emu)
            await asyncio.to_thread(stop.wait)

    asyncio.run(main())


async def measure(emu: Emulator, fetches: int) -> None:
    task_id = next(iter(emu.engine.tasks))
    state = TaskState(task_id, AGENT, emu.organization_id)
    records = ActivityRecords(
        "activity", "dlq", max_part_bytes=524_288, max_request_bytes=1_048_576
    )
    config = PlatformConfig(
        base_url=emu.base_url, api_key=emu.api_key, organization_id=emu.organization_id
    )
    print(
        "| thread bytes | records | wall ms/fetch (median, p95) | bridge CPU ms/fetch "
        "| of which build ms |"
    )
    print("|---|---|---|---|---|")
    async with PlatformClient(config, StreamsConfig(), Metrics()) as client:
        for size in SIZES:
            emu.engine.settings.activity_min_bytes = size
            await client.get_activity_log_bytes(AGENT, task_id)  # warm: connection, caches
            walls, cpus, builds = [], [], []
            parts = 0
            thread = b""
            for _ in range(fetches):
                wall, cpu = time.perf_counter(), time.thread_time()
                thread = await client.get_activity_log_bytes(AGENT, task_id)
                built = time.thread_time()
                parts = len(records.build(state, thread, "2026-11-26T03:00:00+00:00", 0.0))
                builds.append(time.thread_time() - built)
                cpus.append(time.thread_time() - cpu)
                walls.append(time.perf_counter() - wall)
            walls.sort()
            print(
                f"| {len(thread):,} | {parts} | {statistics.median(walls) * 1000:.2f}, "
                f"{walls[int(len(walls) * 0.95) - 1] * 1000:.2f} | "
                f"{statistics.median(cpus) * 1000:.2f} | {statistics.median(builds) * 1000:.2f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fetches", type=int, default=30)
    args = parser.parse_args()
    ready: Future[Emulator] = Future()
    stop = threading.Event()
    server = threading.Thread(target=_serve, args=(ready, stop), daemon=True)
    server.start()
    emu = ready.result(timeout=30)
    try:
        asyncio.run(measure(emu, args.fetches))
    finally:
        stop.set()
        server.join(timeout=10)


if __name__ == "__main__":
    main()
