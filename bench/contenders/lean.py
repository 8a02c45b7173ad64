"""The lean ceiling: the least code that reads every task's stream with
httpx-sse and produces each event's bytes with librdkafka (the bridge's client),
fire and forget. No normalization, no envelope, no headers, no retries, no
transactions: what the bridge costs is measured against it.

    python -m bench.contenders.lean --base-url URL --api-key K --org ORG \
        --agents a,b --bootstrap HOST:PORT --topic T
"""

from __future__ import annotations

import argparse
import asyncio

import httpx
from confluent_kafka import Producer
from httpx_sse import aconnect_sse

TERMINAL = {"completed", "failed", "error", "stopped"}


async def follow(
    client: httpx.AsyncClient, producer: Producer, url: str, topic: str, key: bytes
) -> None:
    async with aconnect_sse(client, "GET", url) as source:
        async for event in source.aiter_sse():
            if event.data:
                while True:
                    try:
                        producer.produce(topic, event.data.encode(), key)
                        break
                    except BufferError:  # librdkafka's queue is full: let it drain
                        await asyncio.sleep(0.001)


async def serve_reports(producer: Producer) -> None:
    """Delivery reports (none are looked at) keep librdkafka's queue moving."""
    while True:
        producer.poll(0)
        await asyncio.sleep(0.01)


async def main(args: argparse.Namespace) -> None:
    headers = {"x-api-key": args.api_key}
    limits = httpx.Limits(max_connections=None)
    # httpcore scans every connection of a pool on each request and each close,
    # so one pool of thousands of streams is O(n^2): one pool per 128 streams
    verify = httpx.create_ssl_context()
    pools: list[httpx.AsyncClient] = []
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 262_144,
            "partitioner": "murmur2_random",
        }
    )
    reports = asyncio.create_task(serve_reports(producer))
    following: dict[str, asyncio.Task[None]] = {}
    async with httpx.AsyncClient(headers=headers, timeout=None) as client:
        while True:
            for agent in args.agents.split(","):
                listing = await client.get(
                    f"{args.base_url}/agent-execution/executions/history/{agent}"
                )
                for task in listing.json():
                    task_id = task["id"]
                    if task_id in following or task.get("status") in TERMINAL:
                        continue
                    url = f"{args.base_url}/{args.org}/agent-execution/{task_id}/events"
                    if len(following) % 128 == 0:
                        pools.append(
                            httpx.AsyncClient(
                                headers=headers, timeout=None, limits=limits, verify=verify
                            )
                        )
                    following[task_id] = asyncio.create_task(
                        follow(pools[-1], producer, url, args.topic, task_id.encode())
                    )
            await asyncio.sleep(5.0)
            if reports.done():
                reports.result()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--base-url", "--api-key", "--org", "--agents", "--bootstrap", "--topic"):
        parser.add_argument(name, required=True)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
