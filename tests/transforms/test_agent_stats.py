"""Per-agent task statistics, driven through the normalizer with scripted
platform events: durations, tokens, tool calls, tasks by status and the
oldest paused task, following tasks that pause, resume, end, are released
and are picked up from a checkpoint."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from support.metrics import sample

from bridge.config import KafkaConfig, RouteRule, TopicsConfig
from bridge.core.checkpoint import Checkpoint
from bridge.core.task import TaskState
from bridge.observability.metrics import OTHER, TOOLS_PER_AGENT, Metrics
from bridge.transforms.agent_stats import AgentStats
from bridge.transforms.normalize import Normalizer

pytestmark = pytest.mark.timeout(10)

AGENT = "a-1"
#: 2026-11-26T03:00:00+00:00 as epoch seconds
T0 = 1795662000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, *, agents: tuple[str, ...] = (AGENT,), **topics: Any) -> None:
        self.metrics = Metrics(agent_ids=agents)
        self.clock = Clock()
        self.stats = AgentStats(self.metrics, clock=self.clock)
        self.normalizer = Normalizer(
            TopicsConfig(**topics), KafkaConfig(), self.metrics, agent_stats=self.stats
        )

    def task(self, task_id: str = "t-1", agent: str | None = AGENT) -> TaskState:
        state = TaskState(task_id, agent, "o-1")
        self.stats.follow(state)
        return state

    def send(self, state: TaskState, event_type: str, data: Any) -> None:
        frame = orjson.dumps(
            {
                "type": event_type,
                "task_id": state.task_id,
                "organization_id": "o-1",
                "time": "2026-11-26T03:00:00+00:00",
                "data": data,
            }
        )
        assert self.normalizer.from_frame(state, frame, None, 0.0), "published"

    def lifecycle(self, state: TaskState, event_type: str, status: str, **fields: Any) -> None:
        data = {"id": state.task_id, "agent_id": AGENT, "status": status, **fields}
        self.send(state, event_type, data)

    def value(self, name: str, **labels: str) -> float:
        return sample(self.metrics, name, **labels)

    def tasks(self, status: str, agent: str = AGENT) -> float:
        return self.value("xpander_bridge_agent_tasks", agent_id=agent, status=status)

    def by_status(self, agent: str = AGENT) -> dict[str, float]:
        return {s: self.tasks(s, agent) for s in ("pending", "executing", "paused")}

    def oldest(self, agent: str = AGENT) -> float:
        return self.value("xpander_bridge_oldest_paused_task_seconds", agent_id=agent)


def iso(offset_s: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(T0 + offset_s, UTC).isoformat()


# --- durations -----------------------------------------------------------------


def test_duration_is_created_to_finished_by_agent_and_status() -> None:
    rig = Rig()
    task = rig.task()
    rig.lifecycle(task, "task_created", "pending", created_at=iso(0))
    rig.lifecycle(task, "task_finished", "failed", created_at=iso(0), finished_at=iso(150))
    labels = {"agent_id": AGENT, "status": "failed"}
    assert rig.value("xpander_bridge_task_duration_seconds_count", **labels) == 1
    assert rig.value("xpander_bridge_task_duration_seconds_sum", **labels) == 150
    assert rig.value("xpander_bridge_task_duration_seconds_bucket", le="120.0", **labels) == 0
    assert rig.value("xpander_bridge_task_duration_seconds_bucket", le="300.0", **labels) == 1
    completed = {"agent_id": AGENT, "status": "completed"}
    assert rig.value("xpander_bridge_task_duration_seconds_count", **completed) == 0


def test_duration_without_finished_at_ends_now_and_without_created_at_is_not_observed() -> None:
    rig = Rig()
    rig.clock.now = T0 + 42
    rig.lifecycle(rig.task("t-1"), "task_finished", "completed", created_at=iso(0))
    rig.lifecycle(rig.task("t-2"), "task_finished", "completed", finished_at=iso(9))
    rig.lifecycle(rig.task("t-3"), "task_finished", "completed", created_at="yesterday")
    labels = {"agent_id": AGENT, "status": "completed"}
    assert rig.value("xpander_bridge_task_duration_seconds_count", **labels) == 1
    assert rig.value("xpander_bridge_task_duration_seconds_sum", **labels) == 42


# --- tokens ----------------------------------------------------------------------


def test_tokens_count_the_growth_of_each_tasks_cumulative_counts() -> None:
    rig = Rig()
    first, second = rig.task("t-1"), rig.task("t-2")
    rig.lifecycle(first, "task_updated", "executing", tokens=None)
    rig.lifecycle(first, "task_updated", "executing", tokens={"prompt_tokens": 100})
    rig.lifecycle(
        first, "task_updated", "executing", tokens={"prompt_tokens": 250, "completion_tokens": 40}
    )
    # the same counts again (task_updated then task_finished), a lower or odd one: no change
    rig.lifecycle(
        first, "task_updated", "completed", tokens={"prompt_tokens": 250, "completion_tokens": 40}
    )
    rig.lifecycle(
        first, "task_finished", "completed", tokens={"prompt_tokens": 7, "completion_tokens": "9"}
    )
    rig.lifecycle(
        second, "task_finished", "completed", tokens={"prompt_tokens": 5, "completion_tokens": 3}
    )
    assert rig.value("xpander_bridge_tokens_total", agent_id=AGENT, kind="prompt") == 255
    assert rig.value("xpander_bridge_tokens_total", agent_id=AGENT, kind="completion") == 43


# --- tool calls ------------------------------------------------------------------


def tool(name: str | None, *, error: bool = False, op: str = "op") -> dict[str, Any]:
    return {"request_id": "r", "operation_id": op, "tool_name": name, "is_error": error}


def test_tool_calls_and_errors_by_agent_and_tool() -> None:
    rig = Rig()
    task = rig.task()
    rig.send(task, "tool_call_request", tool("search"))  # a call counts once, on its result
    rig.send(task, "tool_call_result", tool("search"))
    rig.send(task, "tool_call_result", tool("search", error=True))
    rig.send(task, "tool_call_result", tool(None, op="fetch_page", error=True))
    rig.send(rig.task("t-2"), "tool_call_result", tool("search"))
    calls, errors = "xpander_bridge_tool_calls_total", "xpander_bridge_tool_errors_total"
    assert rig.value(calls, agent_id=AGENT, tool="search") == 3
    assert rig.value(errors, agent_id=AGENT, tool="search") == 1
    assert rig.value(calls, agent_id=AGENT, tool="fetch_page") == 1
    assert rig.value(errors, agent_id=AGENT, tool="fetch_page") == 1


def test_tool_names_are_capped_per_agent() -> None:
    rig = Rig(agents=(AGENT, "a-2"))
    task, other_agent = rig.task("t-1"), rig.task("t-2", "a-2")
    names = [f"tool_{i}" for i in range(TOOLS_PER_AGENT + 5)]
    for name in names:
        rig.send(task, "tool_call_result", tool(name))
    rig.send(other_agent, "tool_call_result", tool(names[-1]))
    calls = "xpander_bridge_tool_calls_total"
    for name in names[:TOOLS_PER_AGENT]:
        assert rig.value(calls, agent_id=AGENT, tool=name) == 1
    assert rig.value(calls, agent_id=AGENT, tool=OTHER) == 5
    assert (
        rig.metrics.registry.get_sample_value(calls, {"agent_id": AGENT, "tool": names[-1]}) is None
    )
    # each agent has its own room
    assert rig.value(calls, agent_id="a-2", tool=names[-1]) == 1


# --- tasks by status and the oldest paused one ----------------------------------------


def test_gauges_follow_a_task_that_pauses_and_resumes_then_ends() -> None:
    rig = Rig()
    task = rig.task()
    assert rig.by_status() == {"pending": 0, "executing": 0, "paused": 0}
    rig.lifecycle(task, "task_created", "pending")
    assert rig.by_status() == {"pending": 1, "executing": 0, "paused": 0}
    rig.lifecycle(task, "task_updated", "executing")
    rig.lifecycle(task, "task_updated", "executing")
    assert rig.by_status() == {"pending": 0, "executing": 1, "paused": 0}
    rig.clock.now = T0 + 100
    rig.lifecycle(task, "task_updated", "paused", paused_at=iso(60))
    assert rig.by_status() == {"pending": 0, "executing": 0, "paused": 1}
    assert rig.oldest() == 40  # from the platform's paused_at
    rig.clock.now = T0 + 1000
    assert rig.oldest() == 940  # computed when scraped
    rig.lifecycle(task, "task_updated", "executing")
    assert rig.by_status() == {"pending": 0, "executing": 1, "paused": 0}
    assert rig.oldest() == 0
    rig.lifecycle(task, "task_updated", "paused")  # no paused_at: from when it was seen
    rig.clock.now = T0 + 1030
    assert rig.oldest() == 30
    rig.lifecycle(task, "task_finished", "completed")
    assert rig.by_status() == {"pending": 0, "executing": 0, "paused": 0}
    assert rig.oldest() == 0
    rig.stats.release(task)  # the worker ends after its task_finished: nothing twice
    assert rig.by_status() == {"pending": 0, "executing": 0, "paused": 0}


def test_oldest_paused_is_the_longest_waiting_task_of_each_agent() -> None:
    rig = Rig(agents=(AGENT, "a-2"))
    first, second, elsewhere = rig.task("t-1"), rig.task("t-2"), rig.task("t-3", "a-2")
    rig.clock.now = T0 + 600
    rig.lifecycle(first, "task_updated", "paused", paused_at=iso(0))
    rig.lifecycle(second, "task_updated", "paused", paused_at=iso(500))
    assert (rig.tasks("paused"), rig.oldest(), rig.oldest("a-2")) == (2, 600, 0)
    rig.lifecycle(first, "task_updated", "executing")
    assert (rig.tasks("paused"), rig.oldest()) == (1, 100)
    rig.lifecycle(elsewhere, "task_updated", "paused", paused_at=iso(590))
    assert (rig.oldest(), rig.oldest("a-2")) == (100, 10)


def test_a_terminal_task_updated_leaves_the_gauges_before_its_task_finished() -> None:
    rig = Rig()
    task = rig.task()
    rig.lifecycle(task, "task_updated", "paused")
    rig.lifecycle(task, "task_updated", "stopped")
    assert rig.by_status() == {"pending": 0, "executing": 0, "paused": 0}
    assert rig.oldest() == 0


def test_a_released_worker_leaves_the_gauges() -> None:
    # The partition moved to another replica, or the task vanished: no task_finished here.
    rig = Rig()
    paused, running = rig.task("t-1"), rig.task("t-2")
    rig.lifecycle(paused, "task_updated", "paused", paused_at=iso(0))
    rig.lifecycle(running, "task_updated", "executing")
    rig.clock.now = T0 + 60
    assert (rig.tasks("paused"), rig.tasks("executing"), rig.oldest()) == (1, 1, 60)
    rig.stats.release(paused)
    rig.stats.release(running)
    assert rig.by_status() == {"pending": 0, "executing": 0, "paused": 0}
    assert rig.oldest() == 0
    rig.stats.release(running)  # twice: no negative count
    assert rig.tasks("executing") == 0


def test_a_task_picked_up_from_a_checkpoint_counts_in_its_checkpointed_status() -> None:
    rig = Rig()
    checkpoint = Checkpoint(
        task_id="t-9",
        agent_id=AGENT,
        organization_id="o-1",
        sequence=12,
        last_sse_id=None,
        last_event_id="e-12",
        last_stream_event_id="e-12",
        first_event_id="e-1",
        status="paused",
        finished=False,
        written_at=T0,
    )
    state = TaskState.from_checkpoint(checkpoint)
    rig.clock.now = T0 + 5
    follow = rig.stats.on_follow()
    follow(state)
    follow(state)  # a second notice of the same task counts it once
    rig.clock.now = T0 + 65
    assert (rig.tasks("paused"), rig.oldest()) == (1, 60)  # from its pick-up here
    rig.lifecycle(state, "task_updated", "executing")
    assert rig.by_status() == {"pending": 0, "executing": 1, "paused": 0}
    rig.stats.on_release()(state)
    assert rig.by_status() == {"pending": 0, "executing": 0, "paused": 0}


def test_the_supervisor_hooks_also_call_the_checkpointers() -> None:
    rig = Rig()
    seen: list[tuple[str, str]] = []
    follow = rig.stats.on_follow(lambda s: seen.append(("watch", s.task_id)))
    release = rig.stats.on_release(lambda s: seen.append(("release", s.task_id)))
    state = TaskState("t-1", AGENT, "o-1", status="executing")
    follow(state)
    assert rig.tasks("executing") == 1
    release(state)
    assert rig.tasks("executing") == 0
    assert seen == [("watch", "t-1"), ("release", "t-1")]


def test_a_task_whose_agent_becomes_known_moves_to_its_agent() -> None:
    rig = Rig()
    task = TaskState("t-1", None, "o-1", status="pending")  # a listing without agent_id
    rig.stats.follow(task)
    assert (rig.tasks("pending", agent="unknown"), rig.tasks("pending")) == (1, 0)
    rig.lifecycle(task, "task_updated", "paused")  # its data names agent a-1
    assert task.agent_id == AGENT
    assert rig.tasks("pending", agent="unknown") == 0
    assert (rig.tasks("pending"), rig.tasks("paused")) == (0, 1)


def test_agents_past_the_cap_are_other() -> None:
    rig = Rig()
    for i in range(16):
        rig.lifecycle(rig.task(f"t-{i}", f"found-{i}"), "task_updated", "executing")
    late = rig.task("t-late", "found-late")
    rig.send(late, "task_updated", {"id": "t-late", "status": "executing"})
    assert rig.tasks("executing", agent=OTHER) == 1
    assert rig.tasks("executing", agent="found-0") == 1


def test_events_a_route_drops_are_not_counted() -> None:
    rig = Rig(routes=[RouteRule(types=["tool_call_result"], drop=True)])
    task = rig.task()
    frame = orjson.dumps({"type": "tool_call_result", "task_id": "t-1", "data": tool("search")})
    assert rig.normalizer.from_frame(task, frame, None, 0.0) == []
    found = rig.metrics.registry.get_sample_value(
        "xpander_bridge_tool_calls_total", {"agent_id": AGENT, "tool": "search"}
    )
    assert found is None


def test_without_stats_the_normalizer_counts_no_agent_statistics() -> None:
    metrics = Metrics(agent_ids=[AGENT])
    normalizer = Normalizer(TopicsConfig(), KafkaConfig(), metrics)
    task = TaskState("t-1", AGENT, "o-1")
    data = {"id": "t-1", "status": "paused", "tokens": {"prompt_tokens": 3}}
    frame = orjson.dumps({"type": "task_updated", "task_id": "t-1", "data": data})
    normalizer.from_frame(task, frame, None, 0.0)
    assert sample(metrics, "xpander_bridge_agent_tasks", agent_id=AGENT, status="paused") == 0
    assert sample(metrics, "xpander_bridge_tokens_total", agent_id=AGENT, kind="prompt") == 0


def test_paused_tasks_lists_each_paused_task_oldest_first() -> None:
    # what the demo's summary lists under the agents' table
    rig = Rig(agents=(AGENT, "a-2"))
    first, second, elsewhere = rig.task("t-1"), rig.task("t-2"), rig.task("t-3", "a-2")
    rig.clock.now = T0 + 600
    rig.lifecycle(first, "task_updated", "paused", paused_at=iso(500))
    rig.lifecycle(second, "task_updated", "paused", paused_at=iso(0))
    rig.lifecycle(elsewhere, "task_updated", "paused", paused_at=iso(590))
    assert rig.stats.paused_tasks() == [
        (AGENT, "t-2", 600),
        (AGENT, "t-1", 100),
        ("a-2", "t-3", 10),
    ]
    rig.lifecycle(second, "task_updated", "executing")
    rig.stats.release(elsewhere)
    assert rig.stats.paused_tasks() == [(AGENT, "t-1", 100)]
