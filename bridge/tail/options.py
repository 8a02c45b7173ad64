"""What ``tail`` was asked for, parsed and checked: where to start, which
topic, which records, how to print. No I/O here."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime

from bridge.config import KafkaConfig, TopicsConfig
from bridge.errors import ConfigError

__all__ = [
    "ColorMode",
    "Filters",
    "Start",
    "StartAt",
    "TailOptions",
    "parse_since",
    "resolve_topic",
    "with_bootstrap",
]

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def with_bootstrap(bootstrap: str | None, kafka: KafkaConfig) -> KafkaConfig:
    """``kafka`` with the brokers of a ``--bootstrap HOST:PORT[,...]`` option."""
    if bootstrap is None:
        return kafka
    servers = [server.strip() for server in bootstrap.split(",") if server.strip()]
    if not servers:
        raise ConfigError("--bootstrap: give HOST:PORT[,HOST:PORT...]", field="--bootstrap")
    return kafka.model_copy(update={"bootstrap_servers": servers})


class StartAt(enum.Enum):
    END = "now"
    BEGINNING = "the beginning"
    TIME = "a time"


@dataclass(frozen=True)
class Start:
    """Where reading starts: the end (now), the beginning, or the first record at
    or after ``since_ms`` (milliseconds since the epoch)."""

    at: StartAt = StartAt.END
    since_ms: int | None = None

    def describe(self) -> str:
        if self.at is StartAt.TIME and self.since_ms is not None:
            moment = datetime.fromtimestamp(self.since_ms / 1000).astimezone()
            return f"since {moment.isoformat(timespec='seconds')}"
        return f"from {self.at.value}"


def parse_since(text: str, *, now_ms: int) -> int:
    """``10m``, ``2h``, ``30s``, ``1.5d``, ``500ms`` ago, or an ISO-8601 time (a
    time without a zone is local time), as milliseconds since the epoch.
    Raises ``ValueError`` with a message fit for the user."""
    match = _DURATION.match(text)
    if match is not None:
        amount, unit = float(match.group(1)), match.group(2)
        return now_ms - int(amount * _UNITS_MS[unit])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30s, 10m, 2h, 1d) nor an ISO-8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive: the local time zone
    return int(moment.timestamp() * 1000)


def resolve_topic(name: str | None, topics: TopicsConfig) -> str:
    """``events`` (the default), ``state`` and ``dlq`` name the bridge's
    configured topics; any other name is taken as it is."""
    aliases = {"events": topics.events, "state": topics.state, "dlq": topics.dlq}
    if name is None:
        return topics.events
    return aliases.get(name, name)


class ColorMode(enum.StrEnum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"

    def enabled(self, *, isatty: bool, no_color: str | None) -> bool:
        """``auto``: only on a terminal, and only when ``NO_COLOR`` is unset or empty."""
        if self is ColorMode.AUTO:
            return isatty and not no_color
        return self is ColorMode.ALWAYS


@dataclass(frozen=True)
class Filters:
    """Which envelopes to show; empty sets let everything through. Task ids
    match by prefix, so the short id ``tail`` prints is enough."""

    tasks: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    statuses: frozenset[str] = frozenset()

    def match(
        self, *, task_id: str | None, agent_id: str | None, type_: str | None, status: str | None
    ) -> bool:
        if self.tasks and (task_id is None or not task_id.startswith(tuple(self.tasks))):
            return False
        if self.agents and agent_id not in self.agents:
            return False
        if self.types and type_ not in self.types:
            return False
        return not (self.statuses and status not in self.statuses)


@dataclass(frozen=True)
class TailOptions:
    """Everything ``tail`` does, once parsed."""

    topic: str
    start: Start
    filters: Filters
    json: bool = False
    text: bool = False
    color: bool = False
    max_records: int | None = None
    idle_exit_s: float | None = None
    timeout_s: float = 10.0
