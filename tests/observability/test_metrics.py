"""The metrics: the names, the doc that lists them, the fixed label sets (created
at 0, and the only words the code counts with), and the event-type cap."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy.helpers import exported_series, promql_problems
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.observability.metrics import (
    DEAD_LETTER_REASONS,
    DROP_REASONS,
    KNOWN_EVENT_TYPES,
    OTHER,
    PUBLISH_ERROR_REASONS,
    RECONNECT_REASONS,
    REPORT_KINDS,
    REPORT_OUTCOMES,
    REPORT_RETRY_REASONS,
    RESYNC_OUTCOMES,
    TASK_END_STATUSES,
    TRACKING_MODES,
    Metrics,
)
from bridge.platform.wire import TERMINAL_STATUSES

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
            assert name.endswith("_seconds"), f"{name}: a histogram names its unit"


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
                if label in {"le", "version", "python", "agent_id"}:
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
        ("xpander_bridge_dead_letters_total", "reason"): DEAD_LETTER_REASONS,
        ("xpander_bridge_publish_errors_total", "reason"): PUBLISH_ERROR_REASONS,
        ("xpander_bridge_stream_reconnects_total", "reason"): RECONNECT_REASONS,
        ("xpander_bridge_resyncs_total", "outcome"): RESYNC_OUTCOMES,
        ("xpander_bridge_tasks_dropped_total", "reason"): DROP_REASONS,
        ("xpander_bridge_tracked_tasks", "mode"): TRACKING_MODES,
        ("xpander_bridge_reports_consumed_total", "kind"): REPORT_KINDS,
    }
    for (name, label), fixed in expected.items():
        assert at_zero(name, label) == {(value,) for value in fixed}, name
    assert at_zero("xpander_bridge_tasks_finished_total", "agent_id", "status") == {
        (agent, status) for agent in ("agent-a", "agent-b") for status in TASK_END_STATUSES
    }
    assert at_zero("xpander_bridge_reports_recorded_total", "kind", "outcome") == {
        (kind, outcome) for kind in REPORT_KINDS for outcome in REPORT_OUTCOMES
    }
    assert at_zero("xpander_bridge_report_retries_total", "kind", "reason") == {
        (kind, reason) for kind in REPORT_KINDS for reason in REPORT_RETRY_REASONS
    }


def test_no_agent_configured_means_no_task_series_yet() -> None:
    samples = scraped_samples(Metrics())
    assert "xpander_bridge_tasks_finished_total" not in samples


def test_the_end_statuses_are_the_platform_terminal_statuses() -> None:
    assert set(TASK_END_STATUSES) == TERMINAL_STATUSES
    assert len(TASK_END_STATUSES) == len(set(TASK_END_STATUSES))


#: For each metric with a label from a fixed set: the allowed values of each
#: positional argument of ``.labels(...)`` (None: open or capped, not checked
#: here). ``tasks_finished``'s status is counted only when it is in
#: ``TERMINAL_STATUSES`` (normalize.py checks), which the test above ties to
#: ``TASK_END_STATUSES``.
FIXED_LABELS: dict[str, tuple[tuple[str, ...] | None, ...]] = {
    "dead_letters": (DEAD_LETTER_REASONS,),
    "publish_errors": (PUBLISH_ERROR_REASONS,),
    "stream_reconnects": (RECONNECT_REASONS,),
    "resyncs": (RESYNC_OUTCOMES,),
    "tasks_dropped": (DROP_REASONS,),
    "tracked_tasks": (TRACKING_MODES,),
    "tasks_finished": (None, None),
    "reports_consumed": (REPORT_KINDS,),
    "reports_recorded": (REPORT_KINDS, REPORT_OUTCOMES),
    "report_retries": (REPORT_KINDS, REPORT_RETRY_REASONS),
}


class Unresolved(Exception):
    pass


class LabelSources:
    """Which string constants can reach an expression, followed through local
    assignments, function parameters (every call site of the function, by
    name) and record attributes (every ``attr=`` keyword): enough for the way
    the bridge passes reason words around, and loud when it is not."""

    def __init__(self, files: list[Path]) -> None:
        self.parents: dict[ast.AST, ast.AST] = {}
        self.functions: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
        self.calls: list[tuple[ast.Call, Path]] = []
        self.files: dict[ast.AST, Path] = {}
        #: attribute name -> the classes that declare it as a field
        self.fields: dict[str, set[str]] = {}
        #: enum class name -> its string values
        self.enums: dict[str, set[str]] = {}
        for path in files:
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                self.files[node] = path
                for child in ast.iter_child_nodes(node):
                    self.parents[child] = node
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    self.functions.setdefault(node.name, []).append(node)
                if isinstance(node, ast.Call):
                    self.calls.append((node, path))
                if isinstance(node, ast.ClassDef):
                    self._learn_class(node)

    def _learn_class(self, node: ast.ClassDef) -> None:
        bases = {ast.unparse(base) for base in node.bases}
        for statement in node.body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                self.fields.setdefault(statement.target.id, set()).add(node.name)
        if bases & {"Enum", "StrEnum", "enum.Enum", "enum.StrEnum"}:
            self.enums[node.name] = {
                statement.value.value
                for statement in node.body
                if isinstance(statement, ast.Assign)
                and isinstance(statement.value, ast.Constant)
                and isinstance(statement.value.value, str)
            }

    def where(self, node: ast.AST) -> str:
        return f"{self.files[node].relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"

    def function_of(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        current = self.parents.get(node)
        while current is not None:
            if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef):
                return current
            current = self.parents.get(current)
        return None

    def values(self, expr: ast.expr, seen: frozenset[int] = frozenset()) -> set[str]:
        if id(expr) in seen:
            return set()
        seen = seen | {id(expr)}
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        if isinstance(expr, ast.IfExp):
            return self.values(expr.body, seen) | self.values(expr.orelse, seen)
        if isinstance(expr, ast.Name):
            return self._name(expr, seen)
        if isinstance(expr, ast.Await):
            return self.values(expr.value, seen)
        if isinstance(expr, ast.Call):
            return self._returns(expr, seen)
        if isinstance(expr, ast.Attribute):
            found = self._attribute(expr, seen)
            if found:
                return found
        raise Unresolved(f"{self.where(expr)}: cannot tell the values of {ast.unparse(expr)}")

    def _returns(self, call: ast.Call, seen: frozenset[int]) -> set[str]:
        """What the called function (found by name) can return."""
        callee = call.func
        called = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
        found: set[str] = set()
        for function in self.functions.get(called, []):
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Return)
                    and node.value is not None
                    and self.function_of(node) is function
                ):
                    found |= self.values(node.value, seen)
        if not found:
            raise Unresolved(f"{self.where(call)}: cannot tell what {called}() returns")
        return found

    def _attribute(self, expr: ast.Attribute, seen: frozenset[int]) -> set[str]:
        if expr.attr == "value" and isinstance(expr.value, ast.Attribute | ast.Name):
            # ``message.kind.value``: an enum member's value. The enum is found
            # by name (``kind`` -> a ``...Kind`` enum): a convention, not a proof.
            owner = expr.value.attr if isinstance(expr.value, ast.Attribute) else expr.value.id
            suffix = owner.title().replace("_", "")
            return {
                value
                for name, members in self.enums.items()
                if name.endswith(suffix)
                for value in members
            }
        # ``record.dead_letter_reason``: a field, set where its class is built.
        found: set[str] = set()
        for call, _ in self.calls:
            callee = call.func
            called = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
            if called in self.fields.get(expr.attr, ()):
                for keyword in call.keywords:
                    if keyword.arg == expr.attr:
                        found |= self.values(keyword.value, seen)
        return found

    def _name(self, name: ast.Name, seen: frozenset[int]) -> set[str]:
        function = self.function_of(name)
        if function is None:
            raise Unresolved(f"{self.where(name)}: {name.id} is not local")
        found: set[str] = set()
        for node in ast.walk(function):
            if isinstance(node, ast.Assign):
                if any(isinstance(t, ast.Name) and t.id == name.id for t in node.targets):
                    found |= self.values(node.value, seen)
            elif (
                isinstance(node, ast.AnnAssign)
                and node.value is not None
                and isinstance(node.target, ast.Name)
                and node.target.id == name.id
            ):
                found |= self.values(node.value, seen)
        arguments = function.args
        positional = [a.arg for a in arguments.posonlyargs + arguments.args]
        keyword_only = [a.arg for a in arguments.kwonlyargs]
        if name.id in positional or name.id in keyword_only:
            found |= self._arguments(function, name.id, positional, seen)
        if not found:
            raise Unresolved(f"{self.where(name)}: no value found for {name.id}")
        return found

    def _arguments(
        self,
        function: ast.FunctionDef | ast.AsyncFunctionDef,
        param: str,
        positional: list[str],
        seen: frozenset[int],
    ) -> set[str]:
        found: set[str] = set()
        sites = 0
        for call, _ in self.calls:
            callee = call.func
            called = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
            if called != function.name:
                continue
            params = positional
            if isinstance(callee, ast.Attribute) and params[:1] in (["self"], ["cls"]):
                params = params[1:]
            for keyword in call.keywords:
                if keyword.arg == param:
                    found |= self.values(keyword.value, seen)
                    sites += 1
            if param in params and params.index(param) < len(call.args):
                found |= self.values(call.args[params.index(param)], seen)
                sites += 1
        if sites == 0:
            raise Unresolved(f"{self.where(function)}: no call of {function.name} sets {param}")
        return found


def label_calls(sources: LabelSources) -> Iterator[tuple[str, ast.Call]]:
    for call, path in sources.calls:
        if path.name == "metrics.py" and path.parent.name == "observability":
            continue  # the zero-initialisation loops over the sets themselves
        func = call.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "labels"
            and isinstance(func.value, ast.Attribute)
        ):
            yield func.value.attr, call


def test_the_code_counts_only_with_words_from_the_fixed_sets() -> None:
    files = [p for p in PACKAGE.rglob("*.py") if "emulator" not in p.parts]
    sources = LabelSources(files)
    checked = set()
    problems = []
    for metric, call in label_calls(sources):
        allowed = FIXED_LABELS.get(metric)
        if allowed is None:
            continue
        assert len(call.args) == len(allowed), f"{sources.where(call)}: {metric} label count"
        for argument, fixed in zip(call.args, allowed, strict=True):
            if fixed is None:
                continue
            try:
                used = sources.values(argument)
            except Unresolved as exc:
                problems.append(f"{exc} (use a word from the set in metrics.py)")
                continue
            problems += [
                f"{sources.where(call)}: {metric} counted with {value!r}, not in {fixed}"
                for value in sorted(used - set(fixed))
            ]
        checked.add(metric)
    assert problems == []
    # The platform-to-Kafka side exists today; the report side joins when written.
    assert checked >= {
        "dead_letters",
        "publish_errors",
        "stream_reconnects",
        "resyncs",
        "tasks_dropped",
        "tracked_tasks",
    }


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
        metrics.sse_events_received.labels(label(event_type)).inc()
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
