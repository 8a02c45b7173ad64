"""How fast the emulator emits: the emulator serves in this process, a lean
raw-socket SSE reader runs in another process (pinned to another core when the
machine has one), and we count events emitted, events read, wall time and the
emulator's own CPU time.

``events/s per core`` = events emitted / emulator CPU seconds: what one core
sustains when it is the bottleneck, independent of how busy the machine is.

    python bench/emulator_speed.py --preset burst
    xpander-bridge emulator --selftest
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import orjson

from bridge.emulator.scenarios import PRESETS, preset
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, StreamSettings

__all__ = ["add_arguments", "main", "run_speedtest"]

_READ_SIZE = 256 * 1024


def _pin(core: int) -> None:
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if len(cores) > 1 and core in cores:
        os.sched_setaffinity(0, {core})


async def _read_stream(host: str, port: int, path: str, api_key: str) -> int:
    """Events read on one stream until the server ends it (the `connected`
    handshake excluded)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nx-api-key: {api_key}\r\n"
            "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
        ).encode()
    )
    count = 0
    tail = b""
    while True:
        chunk = await reader.read(_READ_SIZE)
        if not chunk:
            break
        block = tail + chunk
        count += block.count(b"\ndata: ") + block.startswith(b"data: ")
        tail = block[-6:]
        count -= tail.count(b"\ndata: ")  # counted again with the next block
    writer.close()
    # one `connected` frame per stream is not an event; the header block ends in
    # "\r\n\r\n" so the first frame is always preceded by "\n"
    return max(0, count - 1)


async def _read_all(
    host: str, port: int, org: str, api_key: str, task_ids: list[str], concurrency: int
) -> tuple[int, float]:
    gate = asyncio.Semaphore(concurrency)

    async def one(task_id: str) -> int:
        async with gate:
            return await _read_stream(
                host, port, f"/{org}/agent-execution/{task_id}/events", api_key
            )

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(t) for t in task_ids))
    return sum(counts), time.perf_counter() - started


def _reader_main(encoded: str) -> None:
    """Entry point of the reader process: arguments in, one JSON line out."""
    args = orjson.loads(encoded)
    _pin(1)
    total, elapsed = asyncio.run(
        _read_all(
            args["host"],
            args["port"],
            args["org"],
            args["api_key"],
            args["task_ids"],
            args["concurrency"],
        )
    )
    sys.stdout.write(orjson.dumps({"read": total, "elapsed": elapsed}).decode() + "\n")


async def run_speedtest(
    name: str = "burst", *, concurrency: int = 1000, **params: Any
) -> dict[str, Any]:
    """Run one preset against a fresh emulator; returns the measured figures."""
    _pin(0)
    scenario = preset(name, **params)
    settings = EmulatorSettings(
        stream=StreamSettings(start_on_subscribe=True, replay="none", history_limit=200),
    )
    async with Emulator(settings) as emu:
        namespace = emu.start_scenario(scenario)
        expected = scenario.task_count or 0
        while len(emu.engine.tasks) < expected:  # noqa: ASYNC110 - the scenario fills it
            await asyncio.sleep(0.01)
        task_ids = [run.id for run in emu.engine.tasks.values()][:expected]
        reader_args = orjson.dumps(
            {
                "host": "127.0.0.1",
                "port": emu.port,
                "org": emu.organization_id,
                "api_key": emu.api_key,
                "task_ids": task_ids,
                "concurrency": concurrency,
            }
        ).decode()
        emitted_before = emu.engine.stats.events_emitted
        cpu_before = time.process_time()
        wall_before = time.perf_counter()
        # a plain subprocess, not multiprocessing: it must not re-import whatever
        # __main__ started us (the CLI, a bench script, a test)
        reader = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.emulator.speedtest",
            "--reader",
            reader_args,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await reader.communicate()
        wall = time.perf_counter() - wall_before
        cpu = time.process_time() - cpu_before
        if reader.returncode != 0:
            raise RuntimeError(f"speed reader failed with exit code {reader.returncode}")
        answer = orjson.loads(out.splitlines()[-1])
        read, read_elapsed = int(answer["read"]), float(answer["elapsed"])
        emitted = emu.engine.stats.events_emitted - emitted_before
    return {
        "preset": name,
        "namespace": namespace,
        "tasks": len(task_ids),
        "concurrency": min(concurrency, len(task_ids)),
        "events_emitted": emitted,
        "events_read": read,
        "wall_s": round(wall, 3),
        "reader_s": round(read_elapsed, 3),
        "emulator_cpu_s": round(cpu, 3),
        "events_per_s_wall": round(emitted / wall) if wall else 0,
        "events_per_s_read": round(read / read_elapsed) if read_elapsed else 0,
        "events_per_cpu_s": round(emitted / cpu) if cpu else 0,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=PRESETS[2:], default="burst")
    parser.add_argument("--concurrency", type=int, default=1000, help="open streams at once")
    parser.add_argument("--tasks", type=int, help="burst/wide: number of tasks")
    parser.add_argument("--events", type=int, help="burst/wide: events per task")
    parser.add_argument("--streams", type=int, help="steady: concurrent streams")
    parser.add_argument("--rate", type=float, help="steady: total events per second")
    parser.add_argument("--duration-s", type=float, help="steady: how long")


def main(args: argparse.Namespace) -> int:
    params = {
        k: v
        for k in ("tasks", "events", "streams", "rate", "duration_s")
        if (v := getattr(args, k, None)) is not None
    }
    result = asyncio.run(run_speedtest(args.preset, concurrency=args.concurrency, **params))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0 if result["events_read"] >= result["events_emitted"] * 0.99 else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--reader":
        _reader_main(sys.argv[2])
    else:
        parser = argparse.ArgumentParser(description="emulator emission speed")
        add_arguments(parser)
        sys.exit(main(parser.parse_args()))
