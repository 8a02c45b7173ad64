"""Platform frames into envelope records."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support.metrics import sample

from bridge.config import KafkaConfig, RouteRule, TopicsConfig
from bridge.core.record import OutRecord, mark_written
from bridge.core.task import TaskState
from bridge.envelope import Envelope, TruncatedData
from bridge.observability.metrics import Metrics
from bridge.transforms.normalize import Normalizer

TASK = {"id": "t-1", "agent_id": "a-1", "organization_id": "o-1", "status": "executing"}


def frame(event_type: str, data: Any, time: str = "2026-11-26T03:00:00.123456+00:00") -> bytes:
    return orjson.dumps(
        {"type": event_type, "task_id": "t-1", "organization_id": "o-1", "time": time, "data": data}
    )


def make(**topics: Any) -> tuple[Normalizer, TaskState, Metrics]:
    metrics = Metrics()
    delivered: list[int] = []
    normalizer = Normalizer(
        TopicsConfig(**topics),
        KafkaConfig(max_request_bytes=20_000),
        metrics,
        on_written=lambda task, seq: delivered.append(seq),
    )
    return normalizer, TaskState("t-1", "a-1", "o-1"), metrics


def value_of(record: OutRecord) -> bytes:
    assert record.value is not None, "a record with a value, not a tombstone"
    return record.value


def envelope_of(record: OutRecord) -> Envelope:
    return Envelope.model_validate_json(value_of(record))


def headers(record: OutRecord) -> dict[str, bytes]:
    return dict(record.headers)


def test_lifecycle_event_goes_to_events_and_state_with_cloudevents_headers() -> None:
    normalizer, task, _ = make()
    records = normalizer.from_frame(task, frame("task_updated", TASK), "7", 1.0)
    assert [r.topic for r in records] == ["xpander.task.events", "xpander.task.state"]
    envelope = envelope_of(records[0])
    assert envelope.type == "task_updated"
    assert envelope.category == "lifecycle"
    assert envelope.status == "executing"
    assert envelope.sequence == 1
    assert envelope.source == "sse"
    assert envelope.sse_id == "7"
    assert envelope.data == TASK
    assert records[0].key == b"t-1"
    h = headers(records[0])
    assert h["ce_specversion"] == b"1.0"
    assert h["ce_id"] == envelope.event_id.encode()
    assert h["ce_type"] == b"ai.xpander.task.task_updated"
    assert h["ce_subject"] == b"t-1"
    assert h["ce_source"] == b"/xpander/organizations/o-1/agents/a-1"
    assert h["ce_time"] == b"2026-11-26T03:00:00.123456+00:00"
    assert h["content-type"] == b"application/json"


def test_event_id_is_deterministic() -> None:
    first, task1, _ = make()
    second, task2, _ = make()
    raw = frame("chunk", "hello")
    a = envelope_of(first.from_frame(task1, raw, None, 0)[0])
    b = envelope_of(second.from_frame(task2, raw, None, 0)[0])
    assert a.event_id == b.event_id
    c = envelope_of(second.from_frame(task2, frame("chunk", "other"), None, 0)[0])
    assert c.event_id != a.event_id
    # With server ids, the id decides, whatever the bytes.
    d = envelope_of(first.from_frame(task1, raw, "42", 0)[0])
    e = envelope_of(second.from_frame(task2, frame("chunk", "x"), "42", 0)[0])
    assert d.event_id == e.event_id != a.event_id


def test_unknown_type_and_fields_are_carried() -> None:
    normalizer, task, _ = make()
    data = {"anything": [1, {"nested": True}], "future_field": "x"}
    (record,) = normalizer.from_frame(task, frame("future_insight", data), None, 0)
    envelope = envelope_of(record)
    assert envelope.type == "future_insight"
    assert envelope.category == "other"
    assert envelope.data == data


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"{not json", "invalid_json"), (b"[1,2]", "not_an_event"), (b'{"data": 1}', "not_an_event")],
)
def test_malformed_frames_are_dead_lettered_raw_without_a_sequence(raw: bytes, reason: str) -> None:
    normalizer, task, _ = make()
    (record,) = normalizer.from_frame(task, raw, "3", 0)
    assert record.topic == "xpander.bridge.dlq"
    assert record.value == raw
    assert headers(record)["dlq.reason"] == reason.encode()
    assert headers(record)["dlq.task_id"] == b"t-1"
    assert headers(record)["dlq.sse_id"] == b"3"
    assert record.dead_letter_reason == reason
    assert task.sequence == 0
    (good,) = normalizer.from_frame(task, frame("chunk", "after"), None, 0)
    assert envelope_of(good).sequence == 1


def test_routes_send_elsewhere_or_filter_counted() -> None:
    normalizer, task, metrics = make(
        routes=[RouteRule(types=["chunk"], topic="chunks"), RouteRule(types=["think"], drop=True)]
    )
    assert normalizer.from_frame(task, frame("chunk", "a"), None, 0)[0].topic == "chunks"
    assert normalizer.from_frame(task, frame("think", "b"), None, 0) == []
    assert sample(metrics, "xpander_bridge_events_filtered_total", event_type="think") == 1
    assert task.sequence == 1


def test_task_finished_marks_the_task_and_counts_it() -> None:
    normalizer, task, metrics = make()
    normalizer.from_frame(task, frame("task_finished", {**TASK, "status": "failed"}), None, 0)
    assert task.finished
    assert task.status == "failed"
    assert (
        sample(metrics, "xpander_bridge_tasks_finished_total", agent_id="a-1", status="failed") == 1
    )


def test_oversized_envelope_is_split_into_the_dlq_and_truncated() -> None:
    normalizer, task, metrics = make()
    big = "x" * 70_000
    records = normalizer.from_frame(task, frame("chunk", big), None, 0)
    parts = [r for r in records if r.topic == "xpander.bridge.dlq"]
    (stub,) = [r for r in records if r.topic == "xpander.task.events"]
    envelope = envelope_of(stub)
    assert envelope.truncated
    info = TruncatedData.model_validate(envelope.data)
    assert info.parts == len(parts) > 1
    body = b"".join(value_of(p) for p in parts)
    assert hashlib.sha256(body).hexdigest() == info.sha256
    assert orjson.loads(body)["data"] == big
    assert all(len(value_of(p)) <= 20_000 for p in records)
    assert sample(metrics, "xpander_bridge_oversized_records_total") == 1


def test_the_event_is_written_only_when_all_its_records_are() -> None:
    normalizer, task, _ = make()
    records = normalizer.from_frame(task, frame("task_created", TASK), None, 0)
    assert len(records) == 2
    mark_written(records[0])
    assert task.acks.done == 0
    mark_written(records[1])
    assert task.acks.done == 1
    mark_written(records[1])  # a transaction redone: written once is once
    assert task.acks.done == 1


JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
TYPES = st.sampled_from(
    [
        "task_created",
        "task_updated",
        "task_finished",
        "chunk",
        "tool_call_request",
        "think",
        "plan_updated",
        "auth_event",
    ]
) | st.text(min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    TYPES,
    JSON,
    st.one_of(st.none(), st.text(max_size=10)),
    st.sampled_from(["2026-01-01T00:00:00Z", "bogus", ""]),
)
def test_every_envelope_written_validates_against_the_model(
    event_type: str, data: Any, sse_id: str | None, time: str
) -> None:
    normalizer, task, _ = make()
    for record in normalizer.from_frame(task, frame(event_type, data, time), sse_id, 0):
        if record.topic != "xpander.bridge.dlq":
            envelope = envelope_of(record)
            assert envelope.type == event_type
            assert envelope.data == data


def test_observed_at_clock_is_utc_iso_with_microseconds_and_tracks_time() -> None:
    from datetime import UTC, datetime, timedelta

    from bridge.transforms.normalize import _IsoClock

    clock = _IsoClock()
    before = datetime.now(UTC)
    stamps = [clock() for _ in range(3)]
    after = datetime.now(UTC)
    for stamp in stamps:
        parsed = datetime.fromisoformat(stamp)
        assert parsed.utcoffset() == timedelta(0)
        assert before.replace(microsecond=0) <= parsed <= after
        assert len(stamp) == len("2026-01-01T00:00:00.000000+00:00")
    assert stamps == sorted(stamps)


# --- hostile payloads: fidelity, depth, isolation ----------------------------------


def exact_data(record: OutRecord) -> Any:
    """The envelope's data as Python's own parser reads it: integers exact."""
    assert record.value is not None
    return json.loads(record.value)["data"]


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = {"level": level, "inner": value} if level % 2 else [value]
    return value


def test_nesting_past_the_parsers_limit_is_dead_lettered_without_a_sequence() -> None:
    normalizer, task, _ = make(dlq="dlq")
    data = b"[" * 900 + b'"bottom"' + b"]" * 900
    raw = b'{"type":"tool_call_result","data":' + data + b"}"
    (record,) = normalizer.from_frame(task, raw, None, 1.0)
    assert record.topic == "xpander.task.events"
    assert record.value is not None and data in record.value  # byte for byte
    deeper = b"[" * 1100 + b"1" + b"]" * 1100  # orjson parses 1,024 levels at most
    (refused,) = normalizer.from_frame(task, b'{"type":"x","data":' + deeper + b"}", None, 2.0)
    assert refused.topic == "dlq" and headers(refused)["dlq.reason"] == b"invalid_json"
    assert task.sequence == 1


@pytest.mark.parametrize("depth", [253, 254, 255, 300, 600])
def test_deep_nesting_is_carried_exactly_and_takes_one_sequence(depth: int) -> None:
    normalizer, task, _ = make(dlq="dlq")
    raw = json.dumps({"type": "tool_call_result", "time": None, "data": nested(depth)}).encode()
    records = normalizer.from_frame(task, raw, None, 1.0)
    (record,) = [r for r in records if r.topic != "dlq"] or records
    assert record.topic == "xpander.task.events", record.headers
    assert exact_data(record) == nested(depth)
    assert task.sequence == 1
    after = normalizer.from_frame(task, frame("chunk", "next"), None, 2.0)
    assert json.loads(after[0].value or b"")["sequence"] == 2


def test_integers_beyond_64_bits_and_long_decimals_are_carried_digit_for_digit() -> None:
    normalizer, task, _ = make()
    text = (
        b'{"type":"tool_call_result","data":{"big":123456789012345678901234567890,'
        b'"neg":-98765432109876543210987,"pi":3.14159265358979323846264338327950288,'
        b'"ok":18446744073709551615,"s":"12345678901234567890123"}}'
    )
    (record,) = normalizer.from_frame(task, text, None, 1.0)
    assert record.value is not None
    assert b"123456789012345678901234567890" in record.value
    assert b"-98765432109876543210987" in record.value
    assert b"3.14159265358979323846264338327950288" in record.value
    assert exact_data(record)["big"] == 123456789012345678901234567890
    Envelope.model_validate_json(record.value)  # still a valid envelope


def test_an_unexpected_error_dead_letters_the_frame_and_takes_no_sequence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    normalizer, task, _ = make(dlq="dlq")

    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(normalizer, "_envelope", broken)
    (record,) = normalizer.from_frame(task, frame("chunk", "x"), "5", 1.0)
    assert record.topic == "dlq"
    assert headers(record)["dlq.reason"] == b"internal_error"
    assert record.value == frame("chunk", "x")
    assert task.sequence == 0 and not task.pending
    monkeypatch.undo()
    (ok,) = normalizer.from_frame(task, frame("chunk", "y"), "6", 2.0)
    assert json.loads(ok.value or b"")["sequence"] == 1


EXACT_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(EXACT_JSON)
@example(-9_223_372_036_854_775_809)  # 19 digits, yet below what orjson keeps an integer
def test_any_json_payload_is_carried_exactly(data: Any) -> None:
    normalizer, task, _ = make()
    raw = json.dumps({"type": "tool_call_result", "data": data}).encode()
    (record,) = normalizer.from_frame(task, raw, None, 1.0)
    assert exact_data(record) == json.loads(raw)["data"]


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=400)
    | EXACT_JSON.map(lambda v: json.dumps({"type": "x", "data": v}).encode())
)
def test_arbitrary_bytes_never_raise_and_are_published_or_dead_lettered(raw: bytes) -> None:
    normalizer, task, _ = make(dlq="dlq")
    records = normalizer.from_frame(task, raw, None, 1.0)
    assert records
    if records[0].topic == "dlq":
        assert records[0].value == raw and task.sequence == 0
    else:
        envelope = json.loads(records[0].value or b"")
        assert envelope["sequence"] == task.sequence == 1
        assert envelope["data"] == json.loads(raw).get("data")


@pytest.mark.parametrize(
    ("sent", "published"),
    [
        ("2026-11-26T03:00:00.123456+00:00", "2026-11-26T03:00:00.123456+00:00"),  # as sent
        ("2026-11-26T03:00:00Z", "2026-11-26T03:00:00Z"),
        ("2026-11-26T05:00:00+02:00", "2026-11-26T05:00:00+02:00"),
        ("2026-11-26T03:00:00.5", "2026-11-26T03:00:00.500000+00:00"),  # no offset: UTC
        ("2026-11-26 03:00:00", "2026-11-26T03:00:00+00:00"),  # space, no offset
        ("2026-11-26", "2026-11-26T00:00:00+00:00"),  # a date alone
        ("20261126T030000Z", "2026-11-26T03:00:00+00:00"),  # ISO 8601 basic format
    ],
)
def test_the_time_is_published_as_rfc_3339(sent: str, published: str) -> None:
    # CloudEvents' `time` (ce_time) and the schema's date-time are RFC 3339:
    # a consumer's SDK refuses the ISO 8601 forms Python happens to read.
    normalizer, task, _ = make()
    record = normalizer.from_frame(task, frame("chunk", {"text": "hi"}, time=sent), "1", 1.0)[0]
    assert orjson.loads(value_of(record))["occurred_at"] == published
    assert headers(record)["ce_time"] == published.encode()


def test_a_time_that_is_no_time_falls_back_to_when_it_was_observed() -> None:
    normalizer, task, _ = make()
    record = normalizer.from_frame(
        task, frame("chunk", {"text": "hi"}, time="yesterday"), "1", 1.0
    )[0]
    envelope = orjson.loads(value_of(record))
    assert envelope["occurred_at"] == envelope["observed_at"]
