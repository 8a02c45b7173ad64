"""Report and metrics messages: the input contract."""

from __future__ import annotations

import inspect
from typing import TypedDict

import orjson
import pytest
from xpander_sdk.modules.tasks.sub_modules.task import Task as SdkTask

from bridge.errors import InvalidDataError
from bridge.transforms.reports import (
    ExternalTaskReport,
    MetricsReport,
    ReportKind,
    derived_report_id,
    parse_message,
)


class Coords(TypedDict):
    """Where a message was read: ``parse_message``'s keyword arguments."""

    topic: str
    partition: int
    offset: int


COORDS: Coords = {"topic": "xpander.task.reports", "partition": 3, "offset": 42}


def parse(kind: ReportKind, value: object, key: bytes | None = None) -> dict[str, object]:
    parsed = parse_message(kind, orjson.dumps(value), key, **COORDS)
    body: dict[str, object] = orjson.loads(parsed.body)
    body["__agent"] = parsed.agent_id
    body["__task"] = parsed.task_id
    return body


def test_fields_are_exactly_the_sdk_keyword_arguments() -> None:
    sdk = set(inspect.signature(SdkTask.areport_external_task).parameters) - {
        "cls",
        "configuration",
    }
    assert set(ExternalTaskReport.model_fields) == sdk


def test_report_becomes_the_task_report_request() -> None:
    body = parse(
        ReportKind.REPORT,
        {
            "agent_id": "a-1",
            "id": "run-7",
            "input": "summarize",
            "llm_response": {"choices": [1]},
            "tokens": {"completion_tokens": 5, "prompt_tokens": 9},
            "is_success": False,
            "result": "no",
            "duration": 1.5,
            "used_tools": ["search"],
        },
    )
    assert body == {
        "__agent": "a-1",
        "__task": "run-7",
        "id": "run-7",
        "input": "summarize",
        "llm_response": {"choices": [1]},
        "tokens": {"completion_tokens": 5, "prompt_tokens": 9},
        "is_success": False,
        "result": "no",
        "duration": 1.5,
        "used_tools": ["search"],
    }


def test_agent_from_the_key_and_a_derived_deterministic_id() -> None:
    body = parse(ReportKind.REPORT, {"result": "ok"}, key=b"agent-from-key")
    assert body["__agent"] == "agent-from-key"
    assert body["id"] == body["__task"] == derived_report_id("xpander.task.reports", 3, 42)
    assert derived_report_id("xpander.task.reports", 3, 42) != derived_report_id(
        "xpander.task.reports", 3, 43
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"{nope", "not JSON"),
        (b"[1]", "not a JSON object"),
        (None, "empty message"),
        (
            b'{"agent_id": "a", "is_sucess": false, "reslt": 1}',
            "unknown field(s): is_sucess, reslt",
        ),
        (b'{"agent_id": "a", "duration": -1}', "duration"),
        (b'{"result": "no agent"}', "no agent_id"),
    ],
)
def test_bad_messages_say_why(value: bytes | None, message: str) -> None:
    with pytest.raises(InvalidDataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_message(ReportKind.REPORT, value, None, **COORDS)


def test_metrics_message_carries_execution_metrics_report() -> None:
    body = parse(
        ReportKind.METRICS,
        {
            "agent_id": "a-2",
            "execution_id": "t-9",
            "source": "sdk",
            "memory_thread_id": "t-9",
            "task": "do it",
            "status": "completed",
            "duration": 2.0,
            "ai_model": "gpt",
            "llm_tokens": {"worker": {"completion_tokens": 3, "prompt_tokens": 4}},
        },
    )
    assert body["__agent"] == "a-2"
    assert body["__task"] == "t-9"
    assert body["execution_id"] == "t-9"
    assert body["triggered_by"] == "N/A"
    tokens = body["llm_tokens"]
    assert isinstance(tokens, dict)
    assert tokens["worker"]["completion_tokens"] == 3
    assert "agent_id" not in body


def test_metrics_fields_match_the_sdk_model() -> None:
    from xpander_sdk.modules.tasks.models.task import ExecutionMetricsReport as Sdk

    assert set(MetricsReport.model_fields) - {"agent_id"} == set(Sdk.model_fields)


@pytest.mark.parametrize(
    "hostile",
    ["../../agents/x/delete?confirm=1", "a/b", "..", "a b", "x" * 201, "\x00", "%2e%2e", "é"],
)
def test_ids_that_are_not_ids_are_refused_with_the_field_named(hostile: str) -> None:
    report = orjson.dumps({"agent_id": hostile, "is_success": True})
    with pytest.raises(InvalidDataError, match="agent_id"):
        parse_message(ReportKind.REPORT, report, None, topic="t", partition=0, offset=0)
    report = orjson.dumps({"agent_id": "a-1", "id": hostile, "is_success": True})
    with pytest.raises(InvalidDataError, match=r"^id "):
        parse_message(ReportKind.REPORT, report, None, topic="t", partition=0, offset=0)
