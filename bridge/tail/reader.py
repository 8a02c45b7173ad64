"""Reading one topic with librdkafka, as an observer: every partition assigned
by hand (no consumer group joined, no offset ever committed), committed
records only (``read_committed``), from the end, the beginning or a time.

Every failure that ends ``tail`` is a :class:`TailError` whose message is one
line naming the broker or the topic; librdkafka's own log lines are kept off
the terminal (the last one explains an unreachable broker).
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from bridge.config import KafkaConfig
from bridge.core.message import InMessage
from bridge.kafka.group import in_message
from bridge.kafka.rdkafka import consumer_config
from bridge.tail.options import Start, StartAt

__all__ = ["TailError", "TopicReader"]

#: librdkafka's log lines: not on the user's terminal (errors reach us via error_cb)
_QUIET = logging.getLogger("bridge.tail.librdkafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

_BATCH = 500
#: errors after which reading cannot go on: nothing would change by waiting
_FATAL = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError._SSL,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
    }
)
# "127.0.0.1:9/bootstrap: Connect to ... failed: Connection refused (after 0ms in state CONNECT)"
_BROKER_PREFIX = re.compile(r"^\S+/(?:bootstrap|\d+): ")
_STATE_SUFFIX = re.compile(r"\s*\(after \d+ms in state \w+\)$")


class TailError(Exception):
    """``tail`` cannot go on; the message is the one line the user sees."""


def _detail(error: KafkaError) -> str:
    text = _STATE_SUFFIX.sub("", _BROKER_PREFIX.sub("", error.str()))
    return text.replace("\n", " ")


class TopicReader:
    """One topic, all its partitions, read with the bridge's Kafka settings
    (TLS and SASL included). Make it, ``start()``, ``poll()`` in a loop, ``close()``."""

    def __init__(self, kafka: KafkaConfig, topic: str, *, timeout_s: float) -> None:
        self.topic = topic
        self.bootstrap = ",".join(kafka.bootstrap_servers)
        self._timeout_s = timeout_s
        self._errors: list[KafkaError] = []
        self._warned: set[int] = set()
        options: dict[str, Any] = consumer_config(
            kafka,
            # librdkafka wants a group id even when assigning by hand; this one
            # is never joined and never committed to
            group_id=f"xpander-bridge-tail-{uuid.uuid4().hex[:12]}",
            client_id="xpander-bridge-tail",
            read_committed=True,
            offset_reset="latest",
        )
        options.update(
            {
                "logger": _QUIET,
                "error_cb": self._errors.append,
                "fetch.wait.max.ms": 100,
                "enable.partition.eof": False,
            }
        )
        self._consumer = Consumer(options)
        self.partitions = 0

    def start(self, start: Start) -> None:
        """Check the topic exists, then assign every partition at *start*."""
        partitions = self._partitions()
        if start.at is StartAt.BEGINNING:
            assigned = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions]
        else:
            # resolved now, not at the first fetch: a record written after
            # start() returns is never missed (-1 asks for the end offsets)
            at = start.since_ms if start.since_ms is not None else OFFSET_END
            assigned = self._offsets([TopicPartition(self.topic, p, at) for p in partitions])
        self._consumer.assign(assigned)
        self.partitions = len(partitions)

    def poll(self, timeout_s: float) -> list[InMessage]:
        """What arrived within *timeout_s* (often nothing); errors are kept for
        ``problems()``."""
        messages = self._consumer.consume(_BATCH, timeout_s)
        out: list[InMessage] = []
        for message in messages:
            error = message.error()
            if error is None:
                out.append(in_message(message))
            else:
                self._errors.append(error)
        return out

    def problems(self) -> list[str]:
        """Errors since the last call, each once per kind (a broker that went
        away, for instance); raises ``TailError`` for the fatal ones."""
        errors, self._errors[:] = list(self._errors), []
        notes: list[str] = []
        for error in errors:
            if error.fatal() or error.code() in _FATAL:
                raise TailError(f"reading {self.topic} on {self.bootstrap}: {_detail(error)}")
            if error.code() not in self._warned:
                self._warned.add(error.code())
                notes.append(f"{self.bootstrap}: {_detail(error)} (still trying)")
        return notes

    def recovered(self) -> None:
        """Records arrive again: the next problem is worth a note again."""
        self._warned.clear()

    def close(self) -> None:
        self._consumer.close()

    # -- internals ----------------------------------------------------------------

    def _partitions(self) -> list[int]:
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=self._timeout_s)
        except KafkaException as exc:
            raise self._unreachable(exc) from None
        found = metadata.topics.get(self.topic)
        error = found.error if found is not None else None
        if found is None or (error is not None and error.code() in _MISSING):
            raise TailError(f'topic "{self.topic}" does not exist on {self.bootstrap}')
        if error is not None:
            raise TailError(f'topic "{self.topic}" on {self.bootstrap}: {_detail(error)}')
        if not found.partitions:
            raise TailError(f'topic "{self.topic}" on {self.bootstrap} has no partitions')
        return sorted(found.partitions)

    def _offsets(self, wanted: list[TopicPartition]) -> list[TopicPartition]:
        try:
            found = self._consumer.offsets_for_times(wanted, timeout=self._timeout_s)
        except KafkaException as exc:
            raise self._unreachable(exc) from None
        for tp in found:
            if tp.error is not None:
                raise TailError(
                    f"offsets of {self.topic} [{tp.partition}] on {self.bootstrap}: "
                    f"{_detail(tp.error)}"
                )
        # -1: no record at or after that time (or an empty partition): the end
        return [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in found]

    def _unreachable(self, exc: KafkaException) -> TailError:
        """Why the cluster did not answer: librdkafka's last connection error
        says more than the timeout does (it is served by a poll)."""
        self._consumer.poll(0.1)
        errors = [e for e in self._errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
        if errors:
            cause = _detail(errors[-1])
        else:
            carried = exc.args[0] if exc.args else exc
            cause = _detail(carried) if isinstance(carried, KafkaError) else str(carried)
        return TailError(
            f"cannot reach Kafka at {self.bootstrap} within {self._timeout_s:g}s: {cause}"
        )


_MISSING = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC})
