"""The Grafana dashboard: well formed, and every query on a metric the bridge exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.helpers import DASHBOARD, OPERATIONS, exported_series, promql_problems


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _queries() -> Iterator[tuple[str, str]]:
    for panel in _panels():
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def test_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "xpander-bridge"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "job", "instance", "agent"}
    for panel in _panels():
        # No data source pinned to one Grafana: always the variable.
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()


def test_every_query_uses_exported_metrics_and_labels() -> None:
    series = exported_series()
    problems = [
        f"{title}: {p}" for title, expr in _queries() for p in promql_problems(expr, series)
    ]
    assert problems == []


def test_every_query_filters_by_the_selected_bridges() -> None:
    for title, expr in _queries():
        assert 'job=~"$job", instance=~"$instance"' in expr, title


@pytest.mark.parametrize(
    ("what", "needle"),
    [
        ("events/s by type", "sum by (event_type) (rate(xpander_bridge_sse_events_received_total"),
        ("tasks finished by status", "sum by (status) (rate(xpander_bridge_tasks_finished_total"),
        ("queue depth", "xpander_bridge_queue_depth"),
        (
            "publish latency p99",
            "histogram_quantile(0.99, sum by (le) "
            "(rate(xpander_bridge_publish_latency_seconds_bucket",
        ),
        ("publish errors", "rate(xpander_bridge_publish_errors_total"),
        ("dead letters", "rate(xpander_bridge_dead_letters_total"),
        ("reconnects", "rate(xpander_bridge_stream_reconnects_total"),
        (
            "reports by outcome",
            "sum by (kind, outcome) (rate(xpander_bridge_reports_recorded_total",
        ),
        ("an agent's tasks by status now", "sum by (status) (xpander_bridge_agent_tasks"),
        (
            "an agent's duration p95",
            "histogram_quantile(0.95, sum by (le) "
            "(rate(xpander_bridge_task_duration_seconds_bucket",
        ),
        (
            "an agent's duration p50",
            "histogram_quantile(0.50, sum by (le) "
            "(rate(xpander_bridge_task_duration_seconds_bucket",
        ),
        ("an agent's tokens per minute", "sum by (kind) (rate(xpander_bridge_tokens_total"),
        ("an agent's paused tasks", 'xpander_bridge_agent_tasks{job=~"$job"'),
        ("an agent's oldest paused task", "max(xpander_bridge_oldest_paused_task_seconds"),
        ("an agent's tool errors", "sum by (tool) (rate(xpander_bridge_tool_errors_total"),
        ("owned partitions per replica", "sum by (instance) (xpander_bridge_owned_partitions"),
        ("the partitions to own", "max(xpander_bridge_coordination_partitions"),
        (
            "unowned partitions, as the alert computes them",
            "max by (job, namespace) (xpander_bridge_coordination_partitions",
        ),
        (
            "rebalances per replica",
            "sum by (instance) (increase(xpander_bridge_rebalances_total",
        ),
        ("checkpoint lag per replica", "sum by (instance) (xpander_bridge_checkpoint_lag"),
        ("resumes by kind", "sum by (kind) (rate(xpander_bridge_resumes_total"),
        ("follow hints by outcome", "sum by (outcome) (rate(xpander_bridge_follow_hints_total"),
    ],
)
def test_dashboard_shows(what: str, needle: str) -> None:
    assert any(needle in expr for _, expr in _queries()), f"no panel shows {what}"


def _agent_row() -> list[dict[str, Any]]:
    """The panels of the row repeated per agent: from its row to the next one."""
    panels = _dashboard()["panels"]
    [start] = [i for i, p in enumerate(panels) if p["type"] == "row" and p.get("repeat")]
    rest = panels[start + 1 :]
    end = next((i for i, p in enumerate(rest) if p["type"] == "row"), len(rest))
    return [panels[start], *rest[:end]]


def test_the_agent_row_repeats_per_agent_and_sums_over_replicas() -> None:
    row, *panels = _agent_row()
    assert row["repeat"] == "agent"
    assert "$agent" in row["title"]
    titles = {p["title"] for p in panels}
    assert titles == {
        "Tasks by status",
        "Duration p50 / p95",
        "Tokens per minute",
        "Paused now",
        "Oldest paused",
        "Tool errors",
    }
    for panel in panels:
        for target in panel["targets"]:
            expr = target["expr"]
            assert 'agent_id=~"$agent"' in expr, panel["title"]
            # one replica follows each task: the agent's figure is over all of them
            assert expr.startswith(("sum", "max", "histogram_quantile(")), panel["title"]
            assert "instance" not in expr.split("{")[0], panel["title"]
    paused = next(p for p in panels if p["title"] == "Paused now")
    assert 'status="paused"' in paused["targets"][0]["expr"]


def test_every_exported_metric_is_on_the_dashboard() -> None:
    """A metric added to the bridge gets a panel (or this test says which)."""
    shown = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for _, expr in _queries()
        for name in re.findall(r"\bxpander_bridge_[a-z0-9_]+\b", expr)
    }
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported_series()}
    assert sorted(families - shown) == []


def test_the_coordination_row_has_the_replica_panels() -> None:
    panels = _dashboard()["panels"]
    [start] = [i for i, p in enumerate(panels) if p.get("title") == "Replicas and resume"]
    rest = panels[start + 1 :]
    end = next(i for i, p in enumerate(rest) if p["type"] == "row")
    assert [p["title"] for p in rest[:end]] == [
        "Unowned partitions",
        "Owned partitions",
        "Rebalances",
        "Checkpoint lag",
        "Resumes from checkpoints",
        "Follow hints",
    ]
    # the repeated agent row comes last: nothing else is repeated with it
    [agent_row] = [i for i, p in enumerate(panels) if p["type"] == "row" and p.get("repeat")]
    assert start < agent_row
    assert all(p["type"] != "row" for p in panels[agent_row + 1 :])


def test_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in _dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for y in range(pos["y"], pos["y"] + pos["h"]):
            for x in range(pos["x"], pos["x"] + pos["w"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_the_runbooks_name_panels_that_exist() -> None:
    """docs/OPERATIONS.md sends operators to panels by their title (*Title*)."""
    titles = {p["title"] for p in _dashboard()["panels"]}
    italics = set(re.findall(r"(?<!\*)\*([A-Z][^*\n]+)\*(?!\*)", OPERATIONS.read_text()))
    named = italics - {"Targets"}  # Prometheus' page, not a panel
    assert {"Queue depth", "Paused now"} <= named, "the pattern no longer finds panel names"
    assert sorted(named - titles) == []
