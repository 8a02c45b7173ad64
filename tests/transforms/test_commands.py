"""Task commands: the strict input models, the body each becomes, the reply."""

from __future__ import annotations

import inspect
import uuid

import orjson
import pytest
from xpander_sdk import Tasks

from bridge.errors import InvalidDataError
from bridge.transforms.commands import (
    CREATE_EXCLUDED,
    CommandKind,
    CommandOutcome,
    CommandResult,
    CreateCommand,
    StopCommand,
    UpdateCommand,
    command_id_of,
    encode_reply,
    parse_command,
    task_id_for,
    valid_topic,
)
from bridge.transforms.reports import derived_report_id

NS = uuid.UUID("8f4e2c7a-3b1d-4f6e-9c2a-7d5b1e0f3a64")
COORDS = {"topic": "xpander.task.commands", "partition": 1, "offset": 7}
OWN = {"command", "command_id"}


def parse(value: object) -> object:
    return parse_command(orjson.dumps(value), namespace=NS, **COORDS)  # type: ignore[arg-type]


def _sdk(method: object) -> set[str]:
    return set(inspect.signature(method).parameters) - {"self"}  # type: ignore[arg-type]


def test_create_fields_are_the_sdk_keyword_arguments_but_the_excluded() -> None:
    assert set(CreateCommand.model_fields) - OWN == _sdk(Tasks.acreate) - set(CREATE_EXCLUDED)
    assert set(CREATE_EXCLUDED) <= _sdk(Tasks.acreate)


def test_update_and_stop_fields_are_the_sdk_keyword_arguments() -> None:
    assert set(UpdateCommand.model_fields) - OWN == _sdk(Tasks.aupdate)
    assert set(StopCommand.model_fields) - OWN == _sdk(Tasks.astop)


def test_create_becomes_the_sdk_request_with_a_task_id_from_the_command_id() -> None:
    parsed = parse(
        {
            "command": "create",
            "command_id": "order-1",
            "agent_id": "a1",
            "prompt": "p",
            "file_urls": ["https://x/f"],
            "user_details": {"id": "u"},
            "tool_call_payload_extension": {"k": 1},
            "title": "t",
        }
    )
    assert parsed.kind is CommandKind.CREATE  # type: ignore[attr-defined]
    assert parsed.task_id == task_id_for(NS, "order-1")  # type: ignore[attr-defined]
    body = orjson.loads(parsed.body)  # type: ignore[attr-defined]
    assert body == {
        "id": task_id_for(NS, "order-1"),
        "input": {"text": "p", "files": ["https://x/f"], "user": {"id": "u"}},
        "payload_extension": {"k": 1},
        "events_streaming": True,
        "title": "t",
    }


def test_without_a_command_id_one_is_derived_from_the_coordinates() -> None:
    parsed = parse({"command": "stop", "task_id": "t-1"})
    assert parsed.command_id == derived_report_id(**COORDS)  # type: ignore[arg-type, attr-defined]
    assert command_id_of(b"{", **COORDS) == (  # type: ignore[arg-type]
        derived_report_id(**COORDS),  # type: ignore[arg-type]
        CommandKind.INVALID,
    )


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"command": "create", "agent_id": "a", "promt": "x"}, "unknown field(s): promt"),
        ({"command": "launch"}, "command: must be one of"),
        ({"command": "stop"}, "task_id"),
        ({"command": "stop", "task_id": "../x"}, "is not an id"),
        ({"command": "update", "task_id": "t"}, "nothing to change"),
        ({"command": "update", "task_id": "t", "status": "done"}, "status"),
        ([1], "not a JSON object"),
    ],
)
def test_invalid_commands_name_the_problem(value: object, error: str) -> None:
    with pytest.raises(InvalidDataError, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse(value)


def test_the_reply_matches_its_schema_model() -> None:
    reply = encode_reply(
        command_id="c",
        command=CommandKind.CREATE,
        outcome=CommandOutcome.OK,
        task_id="t",
        agent_id="a",
        status="pending",
        error=None,
    )
    assert CommandResult.model_validate_json(reply).outcome == "ok"


def test_reply_topic_names() -> None:
    assert valid_topic("replies.team-a_1")
    assert not valid_topic("a b") and not valid_topic("..") and not valid_topic("")
