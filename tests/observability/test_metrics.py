"""The metrics: the names, the doc that lists them, the fixed label sets (created
at 0, and counted only through the typed accessors), and the event-type cap."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy.helpers import exported_series, promql_problems
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.observability.metrics import (
    KNOWN_EVENT_TYPES,
    OTHER,
    TOOLS_PER_AGENT,
    ActiveStatus,
    DeadLetterReason,
    DropReason,
    GcGeneration,
    Metrics,
    PublishErrorReason,
    ReconnectReason,
    ReportKind,
    ReportOutcome,
    ReportRetryReason,
    ResumeKind,
    ResyncOutcome,
    TaskEndStatus,
    TokenKind,
    TrackingMode,
)
from bridge.wire import TERMINAL_STATUSES

pytestmark = pytest.mark.timeout(10)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "METRICS.md"
PACKAGE = ROOT / "bridge"

# --- the registry -------------------------------------------------------------


def exposed(metrics: Metrics) -> dict[str, str]:
    """Every metric as Prometheus scrapes it: exposed name -> type."""
    families: dict[str, str] = {}
    for family in metrics.registry.collect():
        # prometheus_client names a counter's family without ``_total``.
        name = f"{family.name}_total" if family.type == "counter" else family.name
        families[name] = family.type
    return families


def scraped_samples(metrics: Metrics) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets present, read back through the text format."""
    text = generate_latest(metrics.registry).decode()
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


def test_names_follow_the_convention() -> None:
    families = exposed(Metrics())
    assert families
    for name, kind in families.items():
        assert name.startswith("xpander_bridge_"), name
        assert re.fullmatch(r"[a-z0-9_]+", name), name
        if kind == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), f"{name} is a {kind}, not a counter"
        if kind == "histogram":
            # its base unit (Prometheus naming): seconds, or bytes
            assert name.endswith(("_seconds", "_bytes")), f"{name}: a histogram names its unit"


def test_counters_are_declared_with_total_in_the_source() -> None:
    # prometheus_client appends ``_total`` whatever the declared name; the style
    # (STYLE.md, habit 6) is that the name in the source is the name on the wire.
    tree = ast.parse((PACKAGE / "observability" / "metrics.py").read_text())
    declared = [
        str(node.args[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Counter"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]
    assert declared
    assert [name for name in declared if not name.endswith("_total")] == []


# --- docs/METRICS.md ------------------------------------------------------------


@dataclass(frozen=True)
class DocRow:
    name: str
    kind: str
    labels: str


def doc_rows() -> dict[str, DocRow]:
    """The metric tables of docs/METRICS.md: | `name` | type | labels | meaning |."""
    rows: dict[str, DocRow] = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\| `(xpander_bridge_[a-z0-9_]+)` \| ([a-z]+) \| ([^|]*) \|", line)
        if match:
            name, kind, labels = match.groups()
            assert name not in rows, f"{name} is listed twice in docs/METRICS.md"
            rows[name] = DocRow(name, kind, labels)
    return rows


def test_the_doc_lists_exactly_the_registered_metrics_with_their_types() -> None:
    families = exposed(Metrics())
    rows = doc_rows()
    assert sorted(rows) == sorted(families), "docs/METRICS.md and metrics.py disagree"
    for name, kind in families.items():
        assert rows[name].kind == kind, f"{name} is a {kind}, the doc says {rows[name].kind}"


def test_the_doc_names_every_label_and_every_fixed_value() -> None:
    rows = doc_rows()
    metrics = Metrics(agent_ids=["agent-doc"])
    for family in metrics.registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        documented = rows[name].labels
        label_names = set(re.findall(r"`([a-z_]+)`", documented))
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            names = set(sample.labels) - {"le"}
            assert names <= label_names, f"{name}: labels {names - label_names} not in the doc"
            for label, value in sample.labels.items():
                if label in {"le", "version", "python", "agent_id", "owner"}:
                    continue  # open (capped, or the build's own) values
                assert re.search(rf"\b{re.escape(value)}\b", documented), (
                    f"{name}: {label}={value} is created at start-up but not in the doc"
                )
        if not family.samples or all(not s.labels for s in family.samples):
            assert documented.strip() == "none" or label_names, name


def test_the_doc_queries_use_real_metrics_and_labels() -> None:
    text = DOC.read_text()
    blocks = re.findall(r"```promql\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 3
    series = exported_series()
    for block in blocks:
        assert list(promql_problems(block, series)) == [], block
    queries = "\n".join(blocks)
    # The three the operations guide promises.
    assert 'xpander_bridge_tasks_finished_total{status=~"failed|error"}' in queries
    assert "histogram_quantile(0.99" in queries
    assert "xpander_bridge_queue_depth / xpander_bridge_queue_capacity" in queries


# --- the fixed label sets ---------------------------------------------------------


def test_every_fixed_label_value_exists_at_zero_on_start_up() -> None:
    metrics = Metrics(agent_ids=["agent-a", "agent-b", "agent-a"])
    text = generate_latest(metrics.registry).decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))

    def at_zero(sample: str, *labels: str) -> set[tuple[str, ...]]:
        """The label values of every series of ``sample``, each checked to be 0."""
        found = set()
        for values, value in samples.get(sample, []):
            assert value == 0, (sample, values)
            found.add(tuple(values[label] for label in labels))
        return found

    expected = {
        ("xpander_bridge_dead_letters_total", "reason"): DeadLetterReason,
        ("xpander_bridge_publish_errors_total", "reason"): PublishErrorReason,
        ("xpander_bridge_stream_reconnects_total", "reason"): ReconnectReason,
        ("xpander_bridge_resyncs_total", "outcome"): ResyncOutcome,
        ("xpander_bridge_tasks_dropped_total", "reason"): DropReason,
        ("xpander_bridge_tracked_tasks", "mode"): TrackingMode,
        ("xpander_bridge_resumes_total", "kind"): ResumeKind,
        ("xpander_bridge_reports_consumed_total", "kind"): ReportKind,
        ("xpander_bridge_gc_pause_seconds_count", "generation"): GcGeneration,
    }
    for (name, label), fixed in expected.items():
        assert at_zero(name, label) == {(value,) for value in fixed}, name
    assert at_zero("xpander_bridge_tasks_finished_total", "agent_id", "status") == {
        (agent, status) for agent in ("agent-a", "agent-b") for status in TaskEndStatus
    }
    assert at_zero("xpander_bridge_reports_recorded_total", "kind", "outcome") == {
        (kind, outcome) for kind in ReportKind for outcome in ReportOutcome
    }
    assert at_zero("xpander_bridge_report_retries_total", "kind", "reason") == {
        (kind, reason) for kind in ReportKind for reason in ReportRetryReason
    }


def test_no_agent_configured_means_no_task_series_yet() -> None:
    samples = scraped_samples(Metrics())
    assert "xpander_bridge_tasks_finished_total" not in samples


def test_the_end_statuses_are_the_platform_terminal_statuses() -> None:
    assert set(TaskEndStatus) == TERMINAL_STATUSES


def test_only_the_metrics_module_calls_labels() -> None:
    # The typed accessors (``metrics.dead_letters(DeadLetterReason.OVERSIZED)``)
    # are the only way to a labelled series: mypy checks their words.
    callers = [
        str(path.relative_to(ROOT))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "observability" / "metrics.py" and ".labels(" in path.read_text()
    ]
    assert callers == [], "count through the accessors in bridge/observability/metrics.py"


# --- the event-type cap -------------------------------------------------------------


def test_an_unseen_event_type_beyond_the_cap_folds_into_other() -> None:
    metrics = Metrics()
    label = metrics.event_type
    assert label("task_created") == "task_created"
    new = [f"new_type_{i}" for i in range(32)]
    assert [label(t) for t in new] == new  # the first new ones keep their name
    assert label("one_too_many") == OTHER
    assert label("yet_another") == OTHER
    assert label(new[0]) == new[0]  # admitted once, kept
    assert all(label(t) == t for t in KNOWN_EVENT_TYPES)  # known ones never fold
    for event_type in [*new, "one_too_many", "yet_another"]:
        metrics.sse_events_received(label(event_type)).inc()
    counted = {
        labels["event_type"]
        for labels in scraped_samples(metrics)["xpander_bridge_sse_events_received_total"]
    }
    assert counted == {*new, OTHER}


def test_a_very_long_event_type_is_other_even_with_room_left() -> None:
    label = Metrics().event_type
    assert label("x" * 65) == OTHER
    assert label("x" * 64) == "x" * 64


def test_agents_beyond_the_configured_ones_are_capped() -> None:
    label = Metrics(agent_ids=["agent-a"]).agent_label
    assert label("agent-a") == "agent-a"
    others = [f"agent-found-{i}" for i in range(16)]
    assert [label(a) for a in others] == others
    assert label("agent-seventeenth") == OTHER


def test_the_per_agent_series_of_configured_agents_exist_at_zero() -> None:
    metrics = Metrics(agent_ids=["agent-a", "agent-b"])
    samples = scraped_samples(metrics)
    agents = {"agent-a", "agent-b"}

    def pairs(name: str, label: str) -> set[tuple[str, str]]:
        found = set()
        for labels in samples[name]:
            assert metrics.registry.get_sample_value(name, labels) == 0, (name, labels)
            found.add((labels["agent_id"], labels[label]))
        return found

    assert pairs("xpander_bridge_agent_tasks", "status") == {
        (agent, status) for agent in agents for status in ActiveStatus
    }
    assert pairs("xpander_bridge_tokens_total", "kind") == {
        (agent, kind) for agent in agents for kind in TokenKind
    }
    assert pairs("xpander_bridge_task_duration_seconds_count", "status") == {
        (agent, status) for agent in agents for status in TaskEndStatus
    }
    assert {
        labels["agent_id"] for labels in samples["xpander_bridge_oldest_paused_task_seconds"]
    } == agents
    # tools are seen, not configured: none until a call
    assert "xpander_bridge_tool_calls_total" not in samples
    assert "xpander_bridge_agent_tasks" not in scraped_samples(Metrics())


def test_tool_names_are_capped_per_agent_label() -> None:
    metrics = Metrics()
    names = [f"tool-{i}" for i in range(TOOLS_PER_AGENT)]
    assert [metrics.tool_label("agent-a", name) for name in names] == names
    assert metrics.tool_label("agent-a", "one-too-many") == OTHER
    assert metrics.tool_label("agent-a", names[0]) == names[0]
    assert metrics.tool_label("agent-b", "one-too-many") == "one-too-many"
    assert metrics.tool_label("agent-b", "t" * 65) == OTHER
