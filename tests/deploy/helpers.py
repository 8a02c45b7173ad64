"""Shared by the deployment tests: where things are, the real tools, the chart.

Tools are found in this order: an environment variable naming the binary
(``HELM_BIN``, ``PROMTOOL_BIN``, ``HADOLINT_BIN``, ``KCAT_BIN``), ``.tools/bin`` (where
``make tools`` / ``scripts/install-tools.sh`` puts them), the virtualenv's
``bin``, then ``PATH``. A missing tool skips the test with the reason, except
under CI (``CI`` set), where it fails: ``make test`` installs every tool, so a
skip there would hide a broken install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "xpander-bridge"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
RULES = ROOT / "deploy" / "prometheus" / "xpander-bridge-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests"
DASHBOARD = CHART / "dashboards" / "xpander-bridge.json"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
TOOLS_BIN = ROOT / ".tools" / "bin"

RELEASE = "rel"
NAMESPACE = "bridge-ns"

TOOL_ENV = {
    "helm": "HELM_BIN",
    "promtool": "PROMTOOL_BIN",
    "prometheus": "PROMETHEUS_BIN",
    "hadolint": "HADOLINT_BIN",
    "kcat": "KCAT_BIN",
}

Manifest = dict[str, Any]


def find_tool(name: str) -> Path | None:
    """The tool's path, or None when it is nowhere to be found."""
    override = os.environ.get(TOOL_ENV[name])
    if override:
        path = Path(override)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    for candidate in (TOOLS_BIN / name, Path(sys.executable).parent / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def require_tool(name: str) -> Path:
    """The tool's path; skips the test (fails it under CI) when absent."""
    path = find_tool(name)
    if path is not None:
        return path
    reason = (
        f"{name} not found: run `make tools` (scripts/install-tools.sh), "
        f"set {TOOL_ENV[name]}, or put {name} on PATH"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs every tool, so this is a broken install)")
    pytest.skip(reason)


def run(
    args: Sequence[str | Path], *, cwd: Path = ROOT, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a command; on an unexpected exit code, fail with its output."""
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(str(a) for a in args)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def helm_template_args(
    values_files: Iterable[Path] = (), set_values: Iterable[str] = ()
) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for path in values_files:
        args += ["--values", str(path)]
    for item in set_values:
        args += ["--set", item]
    return args


def render(
    helm: Path, values_files: Iterable[Path] = (), set_values: Iterable[str] = ()
) -> list[Manifest]:
    """``helm template`` the chart; every rendered object, parsed."""
    out = run([helm, *helm_template_args(values_files, set_values)]).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_error(
    helm: Path, values_files: Iterable[Path] = (), set_values: Iterable[str] = ()
) -> str:
    """``helm template`` that must fail; its error output."""
    proc = run([helm, *helm_template_args(values_files, set_values)], check=False)
    assert proc.returncode != 0, f"helm template succeeded with {list(set_values)}"
    return proc.stderr


def only(manifests: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of that kind (and name, when given)."""
    found = [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def config_map(manifests: Iterable[Manifest]) -> Manifest:
    """The ConfigMap holding the bridge's config.yaml."""
    found = [m for m in manifests if m["kind"] == "ConfigMap" and "config.yaml" in m["data"]]
    assert len(found) == 1, f"expected one config ConfigMap, got {len(found)}"
    return found[0]


def kinds(manifests: Iterable[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


#: The kinds the chart runs the pods as (values workload.kind).
WORKLOAD_KINDS = ("StatefulSet", "Deployment")


def workload(manifests: Iterable[Manifest]) -> Manifest:
    """The one object running the pods: the StatefulSet or the Deployment."""
    found = [m for m in manifests if m["kind"] in WORKLOAD_KINDS]
    assert len(found) == 1, f"expected one StatefulSet or Deployment, got {kinds(found)}"
    return found[0]


def bridge_container(manifests: Iterable[Manifest]) -> dict[str, Any]:
    containers = workload(manifests)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["bridge"]
    container: dict[str, Any] = containers[0]
    return container


# --- PromQL: the names and labels alerts and dashboards use ------------------

_METRIC = re.compile(r"\bxpander_bridge_[a-z0-9_]+\b")
_SELECTOR = re.compile(r"\b(xpander_bridge_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")

#: Labels Prometheus adds to every scraped series (and ``le`` of histograms).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "le"})


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name the bridge exports, with its label names.

    Read from bridge.observability.metrics itself, so an alert or a panel on a
    renamed metric fails here rather than staying silent in production.
    """
    from prometheus_client import Counter, Histogram
    from prometheus_client.metrics import MetricWrapperBase

    from bridge.observability.metrics import Metrics

    series: dict[str, frozenset[str]] = {}
    for attribute in vars(Metrics()).values():
        metric = getattr(attribute, "metric", attribute)  # a labelled one is in an accessor
        if not isinstance(metric, MetricWrapperBase):
            continue
        # prometheus_client keeps these two private; no public accessor exists.
        name: str = metric._name
        labels = frozenset(metric._labelnames)
        if isinstance(metric, Counter):
            series[f"{name}_total"] = labels
        elif isinstance(metric, Histogram):
            for suffix in ("_bucket", "_sum", "_count"):
                series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
        else:
            series[name] = labels
    return series


def promql_problems(expr: str, series: dict[str, frozenset[str]]) -> Iterator[str]:
    """Unknown metric names, and labels no metric in the expression has."""
    names = set(_METRIC.findall(expr))
    for name in sorted(names - series.keys()):
        yield f"unknown metric {name}"
    for name, matchers in _SELECTOR.findall(expr):
        for label in _MATCHER_LABEL.findall(matchers):
            if name in series and label not in series[name] | TARGET_LABELS:
                yield f"{name} has no label {label}"
    known_labels = set(TARGET_LABELS).union(*(series.get(n, frozenset()) for n in names))
    for grouping in _GROUPING.findall(expr):
        for label in (part.strip() for part in grouping.split(",")):
            if label and label not in known_labels:
                yield f"grouping by {label}, which no metric in the expression has"
