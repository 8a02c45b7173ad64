"""Reports recorded per second against the emulator: `python -m bench.reports_rate`.

Produces N report messages to an embedded broker, then runs the bridge (only
the Kafka-to-platform direction) until the emulator has recorded them all.
Prints reports/s and the ratio to a plain sequential loop of the same HTTP
calls made in the same run, so the figure means something on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time

import httpx
import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bridge.app import Bridge
from bridge.config import BridgeConfig
from bridge.kafka.embedded import EmbeddedBroker

AGENT = "agent-emulator-1"


def fill(bootstrap_servers: str, partitions: int, count: int) -> None:
    """The reports topic with ``count`` reports, before the bridge starts."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    for future in admin.create_topics([NewTopic("bench.reports", partitions, 1)]).values():
        future.result(10)
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 5})
    for i in range(count):
        while True:
            try:
                producer.produce("bench.reports", message(i), str(i % 64).encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(30)


def message(i: int) -> bytes:
    return orjson.dumps(
        {
            "agent_id": AGENT,
            "id": f"bench-{i}",
            "result": f"r{i}",
            "duration": 1.0,
            "tokens": {"completion_tokens": i % 500, "prompt_tokens": 100},
        }
    )


EMULATOR_KEY = "emulator-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def recorded(client: httpx.AsyncClient, base_url: str) -> int:
    inbox = (await client.get(f"{base_url}/_emulator/inbox")).json()
    return len(inbox["report_counts"])


async def baseline(client: httpx.AsyncClient, base_url: str, count: int) -> float:
    """One client, one call after the other: what a naive script does."""
    headers = {"x-api-key": EMULATOR_KEY, "content-type": "application/json"}
    started = time.perf_counter()
    for i in range(count):
        response = await client.post(
            f"{base_url}/agent-execution/{AGENT}/report_task",
            content=message(10**9 + i),
            headers=headers,
        )
        response.raise_for_status()
    return count / (time.perf_counter() - started)


async def main(count: int, partitions: int, in_flight: int) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    # The emulator in its own process: the figure is the bridge's, not the
    # emulator's CPU time shared with it.
    emulator = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "emulator",
        "--port",
        str(port),
        "--scenario",
        "idle",
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        async with EmbeddedBroker() as broker, httpx.AsyncClient() as client:
            while True:
                try:
                    await client.get(f"{base_url}/_emulator/health")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            await asyncio.to_thread(fill, broker.bootstrap_servers, partitions, count)
            config = BridgeConfig.model_validate(
                {
                    "platform": {
                        "base_url": base_url,
                        "api_key": EMULATOR_KEY,
                        "organization_id": "org-emulator",
                    },
                    "streams": {"enabled": False},
                    "kafka": {
                        "bootstrap_servers": [broker.bootstrap_servers],
                    },
                    "reports": {
                        "reports_topic": "bench.reports",
                        "metrics_topic": "bench.metrics",
                        "group_id": "bench",
                        "session_timeout_ms": 2000,
                        "heartbeat_interval_ms": 200,
                        "max_in_flight_per_partition": in_flight,
                    },
                    "http": {"enabled": False},
                    "logging": {"level": "WARNING"},
                }
            )
            async with Bridge(config):
                while (first := await recorded(client, base_url)) == 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                profiler = None
                if "--profile" in sys.argv:
                    import cProfile

                    profiler = cProfile.Profile()
                    profiler.enable()
                started = time.perf_counter()
                while await recorded(client, base_url) < count:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
                if profiler is not None:
                    profiler.disable()
                    profiler.print_stats("cumulative")
            rate = (count - first) / elapsed
            plain = await baseline(client, base_url, min(count, 2000))
    finally:
        emulator.terminate()
        await emulator.wait()
    print(
        f"bridge:   {rate:8.0f} reports/s recorded ({count} reports: consumed, recorded, "
        f"mirrored to Kafka, committed; {partitions} partitions, {in_flight} in flight each)"
    )
    print(f"baseline: {plain:8.0f} reports/s (one client, sequential POSTs, no Kafka)")
    print(f"ratio:    {rate / plain:8.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=None, help="per partition")
    parser.add_argument("--profile", action="store_true", help="cProfile the bridge's run")
    args = parser.parse_args()
    default = BridgeConfig().reports.max_in_flight_per_partition
    asyncio.run(main(args.count, args.partitions, args.in_flight or default))
