"""Per-agent task statistics: durations, tokens, tool calls, tasks by status.

Fed by the normalizer with each published lifecycle event (``lifecycle``) and
each ``tool_call_result`` (``tool_result``), and by the supervisor with each
task it starts (``follow``) and stops (``release``) following. Other events
cost nothing here; a lifecycle event costs a dict lookup and a few compares,
the metric calls only when something changed.

What it counts (``docs/METRICS.md``):

- ``task_duration_seconds{agent_id,status}``: the Task's ``finished_at`` minus
  its ``created_at`` (the platform's times), observed once, on ``task_finished``
  with a terminal status. Without a parseable ``created_at`` nothing is observed.
- ``tokens_total{agent_id,kind}``: the growth of the Task's cumulative
  ``tokens`` (``prompt_tokens``, ``completion_tokens``) from one lifecycle
  event to the next. A task seen first by this replica counts from 0: a task
  whose tokens were already published before it moved here is counted again
  by the new owner (the platform fills them at the end of a run, so in
  practice a move does not double them).
- ``tool_calls_total`` / ``tool_errors_total{agent_id,tool}``: one per
  ``tool_call_result`` (``is_error: true`` also an error); the tool is
  ``tool_name``, else ``operation_id``, capped per agent
  (``metrics.TOOLS_PER_AGENT``).
- ``agent_tasks{agent_id,status}``: the tasks this replica follows, by their
  last status (pending, executing, paused); a task leaves it when it reaches
  a terminal status, and when its worker is released (ended, gone, crashed,
  its partition moved to another replica). The fleet's figure is the sum over
  replicas.
- ``oldest_paused_task_seconds{agent_id}``: computed at scrape time from when
  each paused task paused: the Task's ``paused_at``, else when this replica
  saw the pause (a paused task picked up from a checkpoint counts from its
  pick-up). The fleet's figure is the max over replicas.

Events a routing rule drops are not seen here (like ``tasks_finished_total``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Counter

from bridge.core.task import TaskState
from bridge.observability.metrics import ActiveStatus, Metrics, TaskEndStatus, TokenKind

__all__ = ["AgentStats"]

#: Told of a task state (the supervisor's ``on_follow`` / ``on_release``).
Watcher = Callable[[TaskState], None]

_ACTIVE: dict[str, ActiveStatus] = {status.value: status for status in ActiveStatus}
_END: dict[str, TaskEndStatus] = {status.value: status for status in TaskEndStatus}
_TOKEN_FIELDS = ((TokenKind.PROMPT, "prompt_tokens"), (TokenKind.COMPLETION, "completion_tokens"))
_UNKNOWN = "unknown"
#: Tool names whose counters a task keeps at hand (beyond, looked up per call).
_TOOLS_CACHED = 16


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch of an ISO-8601 time with an offset, else None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # a local time of unknown zone: no duration from it
    return parsed.timestamp()


def _both(first: Watcher, then: Watcher) -> Watcher:
    def both(state: TaskState) -> None:
        first(state)
        then(state)

    return both


@dataclass(slots=True)
class _Task:
    agent_id: str | None
    #: the bounded label of ``agent_id``
    agent: str
    #: the status it is counted under in ``agent_tasks`` (None: not counted)
    status: ActiveStatus | None = None
    prompt: int = 0
    completion: int = 0
    #: tool name -> its (calls, errors) counters, for this task's first few tools
    tools: dict[str, tuple[Counter, Counter]] | None = None


class AgentStats:
    """The per-agent metrics of the tasks one replica follows."""

    def __init__(self, metrics: Metrics, *, clock: Callable[[], float] = time.time) -> None:
        self._metrics = metrics
        self._clock = clock
        self._tasks: dict[str, _Task] = {}
        #: agent label -> task id -> when it paused (epoch seconds)
        self._paused: dict[str, dict[str, float]] = {}

    # --- the supervisor's side -------------------------------------------------

    def follow(self, state: TaskState) -> None:
        """A task is followed from now on, in the status it is known in (a
        checkpoint's, after an ownership move)."""
        if state.finished or state.task_id in self._tasks:
            return
        entry = self._entry(state)
        status = _ACTIVE.get(state.status) if state.status is not None else None
        if status is not None:
            self._count(state.task_id, entry, status, None)

    def release(self, state: TaskState) -> None:
        """The task is no longer followed here (ended, gone, crashed, moved)."""
        entry = self._tasks.pop(state.task_id, None)
        if entry is not None:
            self._uncount(state.task_id, entry)

    def on_follow(self, then: Watcher | None = None) -> Watcher:
        """The supervisor's ``on_follow``: ``follow``, then ``then`` (the checkpointer's)."""
        return self.follow if then is None else _both(self.follow, then)

    def on_release(self, then: Watcher | None = None) -> Watcher:
        """The supervisor's ``on_release``: ``release``, then ``then``."""
        return self.release if then is None else _both(self.release, then)

    # --- the normalizer's side -------------------------------------------------

    def lifecycle(self, task: TaskState, event_type: str, status: str | None, data: Any) -> None:
        """A published ``task_created`` / ``task_updated`` / ``task_finished``."""
        finished = event_type == "task_finished"
        task_id = task.task_id
        entry = self._tasks.get(task_id)
        if entry is None:
            if task.finished and not finished:
                return  # a late event of an ended task: nothing to follow
            entry = self._entry(task)
        elif entry.agent_id != task.agent_id:
            self._relabel(task_id, entry, task.agent_id)
        tokens = data.get("tokens")
        if isinstance(tokens, dict):
            self._tokens(entry, tokens)
        if finished:
            self._tasks.pop(task_id, None)
            self._uncount(task_id, entry)
            end = _END.get(status) if status is not None else None
            if end is not None:
                self._duration(entry.agent, end, data)
            return
        if status is None:
            return
        active = _ACTIVE.get(status)
        if active is not entry.status:
            self._uncount(task_id, entry)
            if active is not None:
                self._count(task_id, entry, active, data.get("paused_at"))

    def tool_result(self, task: TaskState, data: Any) -> None:
        """A published ``tool_call_result``."""
        if not isinstance(data, dict):
            return
        name = data.get("tool_name") or data.get("operation_id")
        if not isinstance(name, str):
            name = _UNKNOWN
        entry = self._tasks.get(task.task_id)
        if entry is None or entry.agent_id != task.agent_id:
            calls, errors = self._tool_counters(
                self._metrics.agent_label(task.agent_id or _UNKNOWN), name
            )
        else:
            # The task's own few tools, looked up once each.
            tools = entry.tools
            if tools is None:
                tools = entry.tools = {}
            counters = tools.get(name)
            if counters is None:
                counters = self._tool_counters(entry.agent, name)
                if len(tools) < _TOOLS_CACHED:
                    tools[name] = counters
            calls, errors = counters
        calls.inc()
        if data.get("is_error") is True:
            errors.inc()

    # --- a view ------------------------------------------------------------------

    def paused_tasks(self) -> list[tuple[str, str, float]]:
        """The paused tasks this replica follows, oldest first: (agent label,
        task id, seconds paused), as ``oldest_paused_task_seconds`` counts them."""
        now = self._clock()
        found = [
            (agent, task_id, max(0.0, now - since))
            for agent, paused in self._paused.items()
            for task_id, since in list(paused.items())
        ]
        return sorted(found, key=lambda item: (-item[2], item[0], item[1]))

    # --- pieces ------------------------------------------------------------------

    def _tool_counters(self, agent: str, name: str) -> tuple[Counter, Counter]:
        tool = self._metrics.tool_label(agent, name)
        return self._metrics.tool_calls(agent, tool), self._metrics.tool_errors(agent, tool)

    def _entry(self, task: TaskState) -> _Task:
        entry = _Task(task.agent_id, self._metrics.agent_label(task.agent_id or _UNKNOWN))
        self._tasks[task.task_id] = entry
        return entry

    def _count(self, task_id: str, entry: _Task, status: ActiveStatus, paused_at: Any) -> None:
        entry.status = status
        self._metrics.agent_tasks(entry.agent, status).inc()
        if status is ActiveStatus.PAUSED:
            since = _timestamp(paused_at)
            paused = self._paused.get(entry.agent)
            if paused is None:
                paused = self._paused[entry.agent] = {}
                self._metrics.oldest_paused_task(entry.agent).set_function(
                    lambda: self._oldest(paused)
                )
            paused[task_id] = since if since is not None else self._clock()

    def _uncount(self, task_id: str, entry: _Task) -> None:
        status = entry.status
        if status is None:
            return
        entry.status = None
        self._metrics.agent_tasks(entry.agent, status).dec()
        if status is ActiveStatus.PAUSED:
            paused = self._paused.get(entry.agent)
            if paused is not None:
                paused.pop(task_id, None)

    def _relabel(self, task_id: str, entry: _Task, agent_id: str | None) -> None:
        """The task's agent became known after it was first counted."""
        status = entry.status
        since = self._paused.get(entry.agent, {}).get(task_id)
        self._uncount(task_id, entry)
        entry.agent_id = agent_id
        entry.agent = self._metrics.agent_label(agent_id or _UNKNOWN)
        entry.tools = None
        if status is not None:
            self._count(task_id, entry, status, None)
            if since is not None:
                self._paused[entry.agent][task_id] = since

    def _oldest(self, paused: dict[str, float]) -> float:
        if not paused:
            return 0.0
        return max(0.0, self._clock() - min(list(paused.values())))

    def _tokens(self, entry: _Task, tokens: dict[str, Any]) -> None:
        for kind, field in _TOKEN_FIELDS:
            value = tokens.get(field)
            if type(value) is not int:
                continue
            seen = entry.prompt if kind is TokenKind.PROMPT else entry.completion
            if value > seen:
                self._metrics.tokens(entry.agent, kind).inc(value - seen)
                if kind is TokenKind.PROMPT:
                    entry.prompt = value
                else:
                    entry.completion = value

    def _duration(self, agent: str, end: TaskEndStatus, data: dict[str, Any]) -> None:
        created = _timestamp(data.get("created_at"))
        if created is None:
            return
        finished = _timestamp(data.get("finished_at"))
        if finished is None:
            finished = self._clock()
        if finished >= created:
            self._metrics.task_duration(agent, end).observe(finished - created)
