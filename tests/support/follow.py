"""A reader that follows topics while a long test runs.

Reading half a million records only at the end of a ten-minute soak took
longer than the soak itself on tansu (each fetch costs the broker more as the
topic grows). Following the topics as the records arrive, the way a real
consumer does, spreads that cost over the run; at the end only the tail is
left. When the condition is still unmet at the deadline, :meth:`diagnosis`
says where the reader stands against each partition's high watermark: a
partition whose position sits below its high watermark with nothing more to
read is held by an open transaction (the last stable offset does not move).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer

from .kafka import ConsumedRecord, _partitions_of

__all__ = ["Follower"]


class Follower:
    """Reads *topics* from the start on a thread until closed."""

    def __init__(
        self, bootstrap_servers: str, topics: Sequence[str], *, read_committed: bool = True
    ) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": f"test-follower-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed" if read_committed else "read_uncommitted",
                "fetch.wait.max.ms": 100,
            }
        )
        self._topics = list(topics)
        self._lock = threading.Lock()
        self._records: list[ConsumedRecord] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="follower", daemon=True)
        self._assigned = threading.Event()

    def __enter__(self) -> Follower:
        self._thread.start()
        if not self._assigned.wait(30):
            raise TimeoutError(f"follower: no partitions for {self._topics}")
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            self._consumer.assign(
                _partitions_of(self._consumer, self._topics, time.monotonic() + 30)
            )
            self._assigned.set()
            while not self._stop.is_set():
                batch = self._consumer.consume(10_000, 0.5)
                fresh = [
                    ConsumedRecord.of(m)
                    for m in batch
                    if m.error() is None and m.value() is not None
                ]
                with self._lock:
                    self._records.extend(fresh)
        finally:
            self._consumer.close()

    def records(self) -> list[ConsumedRecord]:
        """A copy of everything read so far, in arrival order."""
        with self._lock:
            return list(self._records)

    def wait_until(
        self, done: Callable[[list[ConsumedRecord]], bool], timeout_s: float
    ) -> list[ConsumedRecord]:
        """The records once ``done(records)`` holds; AssertionError with the
        diagnosis after *timeout_s*. ``done`` must be incremental (as
        ``support.e2e.covers`` is): it is asked every second."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.records()
            if done(records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"condition not met after {timeout_s:.0f} s with {len(records)} records; "
                    f"{self.diagnosis()}"
                )
            time.sleep(1.0)

    def diagnosis(self) -> str:
        """Per partition: the reader's position against the high watermark."""
        lines = []
        for tp in self._consumer.position(self._consumer.assignment()):
            _, high = self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            if tp.offset < high:
                lines.append(f"{tp.topic}[{tp.partition}] at {tp.offset} of {high}")
        return "behind: " + (", ".join(lines) or "none (every partition read to its end)")
