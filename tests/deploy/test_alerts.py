"""The alert rules: promtool checks and unit tests, one source for the plain
file and the chart, and every metric they use exported by the bridge."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.helpers import (
    CHART,
    OPERATIONS,
    RULE_TESTS,
    RULES,
    exported_series,
    only,
    promql_problems,
    render,
    run,
)

SEVERITIES = {"critical", "warning", "info"}


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alert_names() -> list[str]:
    return [rule["alert"] for rule in _rules()]


def test_promtool_check_rules(promtool: Path) -> None:
    out = run([promtool, "check", "rules", RULES]).stdout
    assert f"SUCCESS: {len(_rules())} rules found" in out


def test_promtool_rule_unit_tests(promtool: Path) -> None:
    files = sorted(RULE_TESTS.glob("*.yaml"))
    assert files
    run([promtool, "test", "rules", *files])


def test_every_alert_has_a_firing_unit_test() -> None:
    fired: set[str] = set()
    for path in RULE_TESTS.glob("*.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    assert set(_alert_names()) <= fired, f"no test fires {set(_alert_names()) - fired}"


def test_plain_rules_file_is_the_charts_file() -> None:
    # One source: deploy/prometheus/ links to the file the chart renders.
    assert RULES.resolve() == (CHART / "files" / "xpander-bridge-rules.yaml").resolve()


def test_chart_prometheus_rule_has_the_same_rules(helm: Path) -> None:
    manifests = render(helm, set_values=["prometheusRule.enabled=true"])
    rule = only(manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_chart_prefixes_runbook_urls(full_manifests: list[dict[str, Any]]) -> None:
    base = "https://git.example.com/platform/xpander-bridge/blob/main/"
    spec = only(full_manifests, "PrometheusRule")["spec"]
    chart_rules = [r for g in spec["groups"] for r in g["rules"]]
    assert len(chart_rules) == len(_rules())
    for chart_rule, plain_rule in zip(chart_rules, _rules(), strict=True):
        url = chart_rule["annotations"].pop("runbook_url")
        assert url == base + plain_rule["annotations"].pop("runbook_url")
        assert chart_rule == plain_rule


@pytest.mark.parametrize("alert", _alert_names())
def test_alert_is_labelled_and_has_a_runbook(alert: str) -> None:
    [rule] = [r for r in _rules() if r["alert"] == alert]
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"] and annotations["description"]
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert page == "docs/OPERATIONS.md"
    assert anchor == alert.lower()
    headings = re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), flags=re.MULTILINE)
    assert alert in headings, f"docs/OPERATIONS.md has no runbook section {alert}"


def test_rules_use_only_exported_metrics_and_labels() -> None:
    series = exported_series()
    problems = [
        f"{rule['alert']}: {problem}"
        for rule in _rules()
        for problem in promql_problems(rule["expr"], series)
    ]
    assert problems == []


def test_metric_checker_catches_mistakes() -> None:
    series = exported_series()
    assert list(promql_problems("rate(xpander_bridge_nope_total[5m])", series)) == [
        "unknown metric xpander_bridge_nope_total"
    ]
    wrong_label = 'xpander_bridge_publish_errors_total{status="x"}'
    assert list(promql_problems(wrong_label, series)) == [
        "xpander_bridge_publish_errors_total has no label status"
    ]
    wrong_grouping = "sum by (agent_id) (xpander_bridge_dead_letters_total)"
    assert list(promql_problems(wrong_grouping, series)) == [
        "grouping by agent_id, which no metric in the expression has"
    ]


def test_chart_sets_the_paused_task_thresholds_per_agent(
    helm: Path, promtool: Path, tmp_path: Path
) -> None:
    values = tmp_path / "values.yaml"
    paused = {"thresholdMinutes": 20, "agentThresholdMinutes": {"agent-slow": 60, "agent-fast": 5}}
    values.write_text(yaml.safe_dump({"prometheusRule": {"enabled": True, "pausedTask": paused}}))
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(only(render(helm, [values]), "PrometheusRule")["spec"]))
    # A task of each agent has waited 30 minutes: past 20 (the default) and 5, not 60.
    agents = ("agent-other", "agent-slow", "agent-fast")
    series = [
        {
            "series": f'xpander_bridge_oldest_paused_task_seconds{{agent_id="{agent}"}}',
            "values": "1800x10",
        }
        for agent in agents
    ]

    def fired(agent: str) -> dict[str, Any]:
        return {
            "exp_labels": {"severity": "warning", "agent_id": agent},
            "exp_annotations": {
                "summary": f"A task of agent {agent} waits for a human",
                "description": f"The oldest paused task of agent {agent} has been waiting "
                "for input for 30 minutes, past the agent's threshold.",
                "runbook_url": "docs/OPERATIONS.md#xpanderbridgetaskpausedtoolong",
            },
        }

    check = {"eval_time": "5m", "alertname": "XpanderBridgeTaskPausedTooLong"}
    tests = tmp_path / "tests.yaml"
    tests.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": series,
                        "alert_rule_test": [
                            {**check, "exp_alerts": [fired("agent-other"), fired("agent-fast")]}
                        ],
                    }
                ],
            }
        )
    )
    run([promtool, "test", "rules", tests])
