"""``xpander-bridge command create|update|stop``: write one task command to the
commands topic, validated by the model the bridge consumes with; with
``--wait``, print the bridge's reply (read from the results topic by the
command's id).

    xpander-bridge command create --agent A --prompt "summarize order 7" --wait
    xpander-bridge command stop --task T --wait

``send_command`` and ``wait_for_reply`` serve the demo's round trip as well.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import KafkaException

from bridge.config import BridgeConfig, CommandsConfig, KafkaConfig, load_config
from bridge.errors import ConfigError, InvalidDataError, UnavailableError
from bridge.kafka.producer import AsyncProducer
from bridge.kafka.rdkafka import producer_config
from bridge.tail.options import Start, StartAt, with_bootstrap
from bridge.tail.reader import TailError, TopicReader
from bridge.transforms.commands import parse_command, task_id_for

__all__ = [
    "SentCommand",
    "configure_parser",
    "reply_reader",
    "run",
    "send_command",
    "wait_for_reply",
]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (Kafka settings and topic names)")
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT[,...]",
        help="brokers to write to, instead of kafka.bootstrap_servers",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="create|update|stop")
    create = verbs.add_parser("create", help="start a task")
    create.add_argument("--agent", required=True, help="the agent id")
    create.add_argument("--prompt", default="", help="the task's input text")
    create.add_argument("--title", help="the task's title")
    create.add_argument("--file-url", action="append", default=[], help="repeatable")
    create.add_argument(
        "--no-streaming", action="store_true", help="events_streaming=false (nothing to follow)"
    )
    update = verbs.add_parser("update", help="change a task")
    update.add_argument("--task", required=True, help="the task id")
    update.add_argument("--status", help="new status (lowercase)")
    update.add_argument("--result", help="the task's result")
    stop = verbs.add_parser("stop", help="stop a task")
    stop.add_argument("--task", required=True, help="the task id")
    for verb in (create, update, stop):
        verb.add_argument("--command-id", help="idempotency key (default: a new UUID)")
        verb.add_argument("--wait", action="store_true", help="print the bridge's reply")
        verb.add_argument("--timeout", type=float, default=30.0, help="seconds --wait waits")


def _message(args: argparse.Namespace) -> dict[str, Any]:
    message: dict[str, Any] = {"command": args.verb, "command_id": args.command_id}
    if args.verb == "create":
        message.update(agent_id=args.agent, prompt=args.prompt, file_urls=args.file_url)
        if args.title is not None:
            message["title"] = args.title
        if args.no_streaming:
            message["events_streaming"] = False
    else:
        message["task_id"] = args.task
    if args.verb == "update":
        for field in ("status", "result"):
            if getattr(args, field) is not None:
                message[field] = getattr(args, field)
    return message


@dataclass(frozen=True)
class SentCommand:
    command_id: str
    #: the Kafka key: the task id (a create's is derived from its command id)
    key: str
    topic: str
    partition: int
    offset: int


async def send_command(
    kafka: KafkaConfig, commands: CommandsConfig, message: dict[str, Any]
) -> SentCommand:
    """Validate ``message`` with the model the bridge consumes with, and write
    it to the commands topic. Raises ``InvalidDataError`` for a command the
    bridge would refuse, ``UnavailableError`` when Kafka does not take it."""
    value = orjson.dumps(message)
    namespace = uuid.UUID(commands.id_namespace)
    # coordinates are placeholders: the message carries its command id
    parsed = parse_command(
        value, namespace=namespace, topic=commands.commands_topic, partition=0, offset=0
    )
    # keyed by the task, so the commands of one task stay in order
    if message["command"] == "create":
        key = task_id_for(namespace, parsed.command_id)
    else:
        key = str(message["task_id"])
    producer = AsyncProducer(producer_config(kafka))
    timeout_s = kafka.request_timeout_ms / 1000
    try:
        delivery = await producer.produce(commands.commands_topic, value, key.encode(), [])
        sent = await asyncio.wait_for(delivery, timeout_s)
    except (KafkaException, TimeoutError) as exc:
        raise UnavailableError(f"not sent to {commands.commands_topic}: {exc}") from exc
    finally:
        await producer.close(timeout_s)
    return SentCommand(parsed.command_id, key, sent.topic, sent.partition, sent.offset)


def reply_reader(kafka: KafkaConfig, commands: CommandsConfig) -> TopicReader:
    """A reader of the results topic from a second ago: start it before sending."""
    reader = TopicReader(kafka, commands.results_topic, timeout_s=10)
    reader.start(Start(StartAt.TIME, since_ms=int(time.time() * 1000) - 1000))
    return reader


def wait_for_reply(reader: TopicReader, command_id: str, timeout_s: float) -> bytes | None:
    """The reply to ``command_id`` (its JSON), or ``None`` after ``timeout_s``.
    Blocking: run it in a thread."""
    deadline = time.monotonic() + timeout_s
    wanted = command_id.encode()
    while time.monotonic() < deadline:
        for message in reader.poll(0.5):
            if message.key == wanted and message.value is not None:
                return message.value
    return None


async def _send(config: BridgeConfig, args: argparse.Namespace) -> int:
    kafka = with_bootstrap(args.bootstrap, config.kafka)
    args.command_id = args.command_id or str(uuid.uuid4())
    reader = reply_reader(kafka, config.commands) if args.wait else None
    try:
        sent = await send_command(kafka, config.commands, _message(args))
        print(
            f"command {sent.command_id} sent to {sent.topic} partition {sent.partition} "
            f"offset {sent.offset}",
            file=sys.stderr if args.wait else sys.stdout,
        )
        if reader is None:
            return 0
        reply = await asyncio.to_thread(wait_for_reply, reader, sent.command_id, args.timeout)
    finally:
        if reader is not None:
            reader.close()
    if reply is None:
        print(f"no reply to {sent.command_id} within {args.timeout:g} s", file=sys.stderr)
        return 3
    print(reply.decode())
    return 0 if orjson.loads(reply).get("outcome") == "ok" else 1


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        return asyncio.run(_send(config, args))
    except InvalidDataError as exc:
        raise ConfigError(f"not a valid {args.verb} command: {exc}") from exc
    except TailError as exc:
        raise UnavailableError(str(exc)) from exc
