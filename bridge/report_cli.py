"""``xpander-bridge report``: write one valid message to the reports (or metrics)
topic, so users can try the Kafka-to-platform path without writing code.

The message is validated by the same model the bridge consumes with, before
anything is sent: a typo is refused here, with the field named.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaException

from bridge.config import load_config
from bridge.errors import ConfigError, InvalidDataError, UnavailableError
from bridge.kafka.producer import AsyncProducer
from bridge.kafka.rdkafka import producer_config
from bridge.transforms.reports import ReportKind, parse_message

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (Kafka settings and topic names)")
    parser.add_argument(
        "--file", help="a JSON file holding the whole message ('-' reads standard input)"
    )
    parser.add_argument(
        "--metrics", action="store_true", help="send to the metrics topic (needs --file)"
    )
    parser.add_argument("--agent-id", help="the agent (also the message key)")
    parser.add_argument("--id", help="task id (derived from the message's offset when absent)")
    parser.add_argument("--input", help="the run's input text")
    parser.add_argument("--result", help="the run's result")
    parser.add_argument("--failed", action="store_true", help="report is_success=false")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds")
    parser.add_argument("--tokens", metavar="COMPLETION,PROMPT", help="token usage, e.g. 120,800")
    parser.add_argument("--used-tool", action="append", default=[], help="repeatable")


def _message(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        try:
            loaded = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InvalidDataError(f"{args.file}: not JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise InvalidDataError(f"{args.file}: not a JSON object")
        if args.agent_id:
            loaded.setdefault("agent_id", args.agent_id)
        return loaded
    if args.metrics:
        raise InvalidDataError("--metrics needs --file with an ExecutionMetricsReport")
    message: dict[str, Any] = {
        "agent_id": args.agent_id,
        "is_success": not args.failed,
        "duration": args.duration,
        "used_tools": args.used_tool,
    }
    for field in ("id", "input", "result"):
        if getattr(args, field) is not None:
            message[field] = getattr(args, field)
    if args.tokens:
        try:
            completion, prompt = (int(part) for part in args.tokens.split(","))
        except ValueError as exc:
            raise InvalidDataError("--tokens takes COMPLETION,PROMPT, e.g. 120,800") from exc
        message["tokens"] = {"completion_tokens": completion, "prompt_tokens": prompt}
    return message


async def _send(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    kind = ReportKind.METRICS if args.metrics else ReportKind.REPORT
    topic = config.reports.metrics_topic if args.metrics else config.reports.reports_topic
    message = _message(args)
    value = orjson.dumps(message)
    key = (message.get("agent_id") or "").encode() or None
    # The bridge's own validation, before sending (coordinates are placeholders).
    parse_message(kind, value, key, topic=topic, partition=0, offset=0)
    producer = AsyncProducer(producer_config(config.kafka))
    timeout_s = config.kafka.request_timeout_ms / 1000
    try:
        delivery = await producer.produce(topic, value, key, [])
        sent = await asyncio.wait_for(delivery, timeout_s)
    except (KafkaException, TimeoutError) as exc:
        raise UnavailableError(f"not sent to {topic}: {exc}") from exc
    finally:
        await producer.close(timeout_s)
    print(f"sent to {sent.topic} partition {sent.partition} offset {sent.offset}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_send(args))
    except InvalidDataError as exc:
        raise ConfigError(
            f"not a valid {('metrics' if args.metrics else 'report')}: {exc}"
        ) from exc
