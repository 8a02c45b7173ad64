"""The ``tail`` loop: poll with short timeouts (so Ctrl-C is prompt), decode,
filter, print; stop on SIGINT/SIGTERM, after ``--max`` records or ``--idle-exit``
seconds without one, closing the consumer every time."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import IO, TextIO

from bridge.config import KafkaConfig
from bridge.core.message import InMessage
from bridge.tail.options import StartAt, TailOptions
from bridge.tail.reader import TopicReader
from bridge.tail.records import decode
from bridge.tail.render import HumanPrinter, JsonPrinter, Printer, StatusMemory

__all__ = ["follow"]

#: the longest a Ctrl-C waits for the poll in progress
_POLL_S = 0.2


class _Stop:
    """Set by the first SIGINT/SIGTERM; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def _signals(stop: _Stop) -> Iterator[None]:
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def follow(
    kafka: KafkaConfig,
    options: TailOptions,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Read and print until stopped; returns the exit code (``TailError`` for a
    failure worth one line on stderr)."""
    stdout, stderr = out or sys.stdout, err or sys.stderr
    stop = _Stop()
    with _signals(stop):
        reader = TopicReader(kafka, options.topic, timeout_s=options.timeout_s)
        try:
            reader.start(options.start)
            print(
                f"xpander-bridge tail: {options.topic} on {reader.bootstrap}, "
                f"{reader.partitions} partition(s), {options.start.describe()}, "
                "committed records only; Ctrl-C stops",
                file=stderr,
                flush=True,
            )
            printer = _printer(options, stdout, stderr)
            try:
                _loop(reader, printer, options, stop, stderr)
            finally:
                printer.finish()
        except BrokenPipeError:
            # whoever read our output is gone (``| head``): nothing more to say
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stdout.fileno())
        finally:
            reader.close()
    return 0


def _printer(options: TailOptions, stdout: TextIO, stderr: TextIO) -> Printer:
    if options.json:
        binary: IO[bytes] = stdout.buffer
        return JsonPrinter(binary, stderr)
    return HumanPrinter(stdout, color=options.color, text=options.text)


def _loop(
    reader: TopicReader, printer: Printer, options: TailOptions, stop: _Stop, stderr: TextIO
) -> None:
    shown = 0
    last = time.monotonic()
    statuses = StatusMemory()
    while not stop.requested:
        messages = reader.poll(_POLL_S)
        for note in reader.problems():
            print(f"xpander-bridge tail: {note}", file=stderr, flush=True)
        if messages:
            reader.recovered()
        for message in messages:
            if stop.requested:
                return
            if not _wanted(message, options):
                continue
            view = decode(message)
            before = statuses.update(view)
            if not options.filters.match(
                task_id=view.task_id, agent_id=view.agent_id, type_=view.type, status=view.status
            ):
                continue
            printer.show(view, before)
            shown += 1
            last = time.monotonic()
            if options.max_records is not None and shown >= options.max_records:
                return
        if options.idle_exit_s is not None and time.monotonic() - last >= options.idle_exit_s:
            return


def _wanted(message: InMessage, options: TailOptions) -> bool:
    """``--since`` by the record's timestamp too: the seek found the first
    record at that time, but later ones may carry older timestamps (and some
    brokers, tansu for one, answer the seek with the first offset)."""
    start = options.start
    if start.at is not StartAt.TIME or start.since_ms is None:
        return True
    return not (0 < message.timestamp < start.since_ms)
