"""The official client baseline: what a user writes from the seed docs. List
each agent's tasks with ``xpander_sdk.Tasks``, load each running one, iterate
``Task.aevents()`` and send every event to Kafka with aiokafka
(``send_and_wait``, as aiokafka's own example does), one coroutine per task.

    python -m bench.contenders.official --base-url URL --api-key K --org ORG \
        --agents a,b --bootstrap HOST:PORT --topic T
"""

from __future__ import annotations

import argparse
import asyncio

from aiokafka import AIOKafkaProducer
from xpander_sdk import Configuration, Tasks

TERMINAL = {"completed", "failed", "error", "stopped"}


async def follow(tasks: Tasks, producer: AIOKafkaProducer, task_id: str, topic: str) -> None:
    task = await tasks.aget(task_id)
    async for event in task.aevents():
        await producer.send_and_wait(topic, event.model_dump_json().encode(), key=task_id.encode())


async def main(args: argparse.Namespace) -> None:
    configuration = Configuration(
        base_url=args.base_url, api_key=args.api_key, organization_id=args.org
    )
    tasks = Tasks(configuration=configuration)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    await producer.start()
    following: dict[str, asyncio.Task[None]] = {}
    while True:
        for agent in args.agents.split(","):
            for item in await tasks.alist(agent_id=agent):
                status = getattr(item.status, "value", item.status)
                if item.id in following or status in TERMINAL:
                    continue
                following[item.id] = asyncio.create_task(
                    follow(tasks, producer, item.id, args.topic)
                )
        await asyncio.sleep(5.0)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--base-url", "--api-key", "--org", "--agents", "--bootstrap", "--topic"):
        parser.add_argument(name, required=True)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
