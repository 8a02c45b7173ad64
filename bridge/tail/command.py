"""``xpander-bridge tail``: its flags, and turning them into ``TailOptions``
with the bridge's own config loading (a bad config is one line naming the
field, exit 2, as for ``run``)."""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

from bridge.config import load_config
from bridge.tail.options import (
    ColorMode,
    Filters,
    Start,
    StartAt,
    TailOptions,
    parse_since,
    resolve_topic,
    with_bootstrap,
)

__all__ = ["configure_parser", "run"]

EXIT_FAILURE = 1


def _since(text: str) -> int:
    try:
        return parse_since(text, now_ms=int(time.time() * 1000))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (Kafka settings and topic names)")
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT[,...]",
        help="brokers to read from, instead of kafka.bootstrap_servers",
    )
    parser.add_argument(
        "--topic",
        help="events (default), state, dlq (the configured names), or any topic name",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record kept"
    )
    start.add_argument(
        "--since",
        type=_since,
        metavar="WHEN",
        help="start at records from this long ago (30s, 10m, 2h, 1d) or this ISO-8601 time "
        "(default: only records written from now on)",
    )
    for flag, what in (
        ("--task", "task id (a prefix is enough)"),
        ("--agent", "agent id"),
        ("--type", "event type, e.g. chunk, task_finished"),
        ("--status", "task status of lifecycle events, e.g. failed"),
    ):
        parser.add_argument(flag, action="append", default=[], help=f"only this {what}; repeatable")
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="each record's value as stored, one per line (jq)"
    )
    output.add_argument(
        "--text", action="store_true", help="show the LLM's streamed chunks as running text"
    )
    parser.add_argument(
        "--color",
        choices=[mode.value for mode in ColorMode],
        default=ColorMode.AUTO.value,
        help="colour: auto (a terminal, NO_COLOR unset), always, never",
    )
    parser.add_argument("--max", type=_positive_int, metavar="N", help="stop after N records")
    parser.add_argument(
        "--idle-exit",
        type=_seconds,
        metavar="SECONDS",
        help="stop when no record was shown for this long",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="give up when Kafka does not answer within this long (default 10)",
    )


def _start(args: argparse.Namespace) -> Start:
    if args.from_beginning:
        return Start(StartAt.BEGINNING)
    if args.since is not None:
        return Start(StartAt.TIME, since_ms=args.since)
    return Start(StartAt.END)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    kafka = with_bootstrap(args.bootstrap, config.kafka)
    stdout = sys.stdout
    if isinstance(stdout, io.TextIOWrapper):
        # whatever the records hold, and whatever the terminal's encoding
        stdout.reconfigure(errors="replace")
    options = TailOptions(
        topic=resolve_topic(args.topic, config.topics),
        start=_start(args),
        filters=Filters(
            tasks=frozenset(args.task),
            agents=frozenset(args.agent),
            types=frozenset(args.type),
            statuses=frozenset(args.status),
        ),
        json=args.json,
        text=args.text,
        color=ColorMode(args.color).enabled(
            isatty=stdout.isatty(), no_color=os.environ.get("NO_COLOR")
        ),
        max_records=args.max,
        idle_exit_s=args.idle_exit,
        timeout_s=args.timeout,
    )
    from bridge.tail.follow import follow
    from bridge.tail.reader import TailError

    try:
        return follow(kafka, options)
    except TailError as exc:
        print(f"xpander-bridge tail: {exc}", file=sys.stderr)
        return EXIT_FAILURE
