"""What the emulator received: task reports, metrics reports, and a count of every
call by endpoint kind and answer status, so a test can check "recorded once" or
"retried three times" without reading logs, and the bytes every listing sent
(what a listing costs).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Inbox", "Received"]


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted report: the agent in the path, the body as sent, when."""

    agent_id: str
    key: str  # the task id (report_task) or execution_id (metrics)
    body: dict[str, Any]
    received_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "key": self.key,
            "body": self.body,
            "received_at": self.received_at,
        }


@dataclass
class Inbox:
    reports: list[Received] = field(default_factory=list)
    metrics: list[Received] = field(default_factory=list)
    report_counts: Counter[str] = field(default_factory=Counter)
    metrics_counts: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)  # endpoint kind -> calls
    answers: Counter[str] = field(default_factory=Counter)  # "kind status" -> answers
    #: "list_tasks" / "list_user_tasks", plus " status=<s>" when filtered -> body bytes sent
    list_bytes: Counter[str] = field(default_factory=Counter)

    def add_report(self, agent_id: str, task_id: str, body: dict[str, Any]) -> None:
        self.reports.append(Received(agent_id, task_id, body, time.time()))
        self.report_counts[task_id] += 1

    def add_metrics(self, agent_id: str, execution_id: str, body: dict[str, Any]) -> None:
        self.metrics.append(Received(agent_id, execution_id, body, time.time()))
        self.metrics_counts[execution_id] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "reports": [r.to_dict() for r in self.reports],
            "report_counts": dict(self.report_counts),
            "metrics": [m.to_dict() for m in self.metrics],
            "metrics_counts": dict(self.metrics_counts),
            "calls": dict(self.calls),
            "answers": dict(self.answers),
            "list_bytes": dict(self.list_bytes),
        }
