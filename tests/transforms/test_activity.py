"""Activity threads into activity-topic records: one record, or ordered parts
that reassemble to the exact bytes the platform sent."""

from __future__ import annotations

import json
import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import KafkaConfig, TopicsConfig
from bridge.core.record import OutRecord, acknowledge, mark_written
from bridge.core.task import TaskState
from bridge.envelope import ActivityAssembler, ActivityEnvelope, InvalidEnvelope, read_activity
from bridge.observability.metrics import ActivityOutcome, Metrics
from bridge.transforms.activity import ActivityRecords, activity_id, split_json_text
from bridge.transforms.normalize import Normalizer

pytestmark = pytest.mark.timeout(60)

OBSERVED = "2026-11-26T03:00:01.251042+00:00"
BIG = 123456789012345678901234567890123


def records_for(max_part_bytes: int = 524_288, **kwargs: object) -> ActivityRecords:
    return ActivityRecords(
        "activity",
        "dlq",
        max_part_bytes=max_part_bytes,
        max_request_bytes=1_048_576,
        **kwargs,  # type: ignore[arg-type]
    )


def task() -> TaskState:
    state = TaskState("t-1", "a-1", "o-1")
    state.status = "completed"
    return state


def thread_bytes(messages: int, text: str) -> bytes:
    """A thread as a platform could send it: pretty-printed (layout whitespace),
    quotes and backslashes to escape, a big integer, an unknown field."""
    body = {
        "id": "t-1",
        "created_at": "2026-11-26T03:00:00Z",
        "messages": [
            {"id": f"m-{n}", "role": "agent", "content": {"text": text, "files": []}, "n": n}
            for n in range(messages)
        ],
        "unknown_field": {"kept": True},
    }
    encoded = json.dumps(body, indent=2, ensure_ascii=False)
    return encoded.replace('"unknown_field"', f'"big": {BIG},\n  "unknown_field"').encode()


def reassemble(records: list[OutRecord]) -> object:
    assembler = ActivityAssembler()
    results = [assembler.add(read_activity(r.value, r.headers)) for r in records]
    assert all(result is None for result in results[:-1])
    assert assembler.pending == 0
    return results[-1]


def test_a_small_thread_is_one_record_with_the_platforms_bytes_inside() -> None:
    thread = thread_bytes(3, 'say "hi" \\ there é')
    (record,) = records_for().build(task(), thread, OBSERVED, 0.0)
    assert thread in (record.value or b""), "the thread's own bytes, not a re-encoding"
    envelope = read_activity(record.value, record.headers)
    assert envelope.parts == 1 and envelope.chunk is None
    assert envelope.event_id == envelope.activity_id == activity_id("t-1")
    assert (envelope.task_id, envelope.agent_id, envelope.organization_id) == ("t-1", "a-1", "o-1")
    assert envelope.status == "completed" and envelope.thread_bytes == len(thread)
    assert envelope.data["big"] == BIG, "a big integer is exact"
    assert envelope.data["unknown_field"] == {"kept": True}
    headers = dict(record.headers)
    assert headers["ce_type"] == b"ai.xpander.task.activity"
    assert headers["ce_id"] == envelope.event_id.encode()
    assert headers["ce_subject"] == b"t-1" and record.key == b"t-1"


@pytest.mark.parametrize("limit", [4096, 65_536])
def test_a_thread_of_many_megabytes_goes_in_parts_and_reassembles_exactly(limit: int) -> None:
    # Multi-byte characters everywhere (2, 3 and 4 bytes), so chunk boundaries
    # fall inside them; quotes, backslashes and newlines grow when escaped.
    text = 'é€😀"\\\n' * 40 + "x" * 37
    thread = thread_bytes(3000 if limit == 4096 else 12_000, text)
    assert len(thread) > (2_000_000 if limit == 4096 else 8_000_000)
    records = records_for(limit).build(task(), thread, OBSERVED, 0.0)
    assert len(records) > 1
    assert all(len(r.value or b"") <= limit for r in records), "every part within the limit"
    assert len({r.key for r in records}) == 1, "one key: one partition, in order"
    envelopes = [read_activity(r.value, r.headers) for r in records]
    assert [e.part for e in envelopes] == list(range(1, len(records) + 1))
    assert {e.parts for e in envelopes} == {len(records)}
    assert len({e.event_id for e in envelopes}) == len(records), "each part its own ce_id"
    assert {e.activity_id for e in envelopes} == {activity_id("t-1")}
    joined = "".join(e.chunk or "" for e in envelopes).encode()
    assert joined == thread, "nothing lost, nothing changed"
    rebuilt = reassemble(records)
    assert rebuilt == json.loads(thread)
    assert isinstance(rebuilt, dict) and rebuilt["big"] == BIG


def test_parts_out_of_order_and_repeated_reassemble() -> None:
    thread = thread_bytes(200, "ü" * 100)
    records = records_for(4096).build(task(), thread, OBSERVED, 0.0)
    envelopes = [read_activity(r.value) for r in records]
    shuffled = envelopes + envelopes[:3]
    random.Random(7).shuffle(shuffled)
    assembler = ActivityAssembler()
    results = [assembler.add(e) for e in shuffled]
    done = [r for r in results if r is not None]
    assert done and done[0] == json.loads(thread)


def test_a_part_altered_fails_the_checksum() -> None:
    records = records_for(4096).build(task(), thread_bytes(100, "a" * 100), OBSERVED, 0.0)
    envelopes = [read_activity(r.value) for r in records]
    altered = envelopes[1].model_copy(update={"chunk": (envelopes[1].chunk or "")[:-1] + " "})
    assembler = ActivityAssembler()
    with pytest.raises(InvalidEnvelope, match="sha256"):
        for envelope in [envelopes[0], altered, *envelopes[2:]]:
            assembler.add(envelope)


def test_the_schema_model_describes_the_records() -> None:
    for limit in (4096, 524_288):
        for record in records_for(limit).build(task(), thread_bytes(300, "x"), OBSERVED, 0.0):
            ActivityEnvelope.model_validate_json(record.value or b"")


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=3000),
    st.integers(min_value=8, max_value=600),
)
def test_split_json_text_keeps_characters_whole_and_each_escaped_slice_within_budget(
    text: str, budget: int
) -> None:
    raw = orjson.dumps(text)  # a JSON text (a string) as the platform could send
    chunks = split_json_text(raw, budget)
    assert b"".join(chunks) == raw
    for chunk in chunks:
        decoded = chunk.decode("utf-8")  # whole characters: never raises
        assert len(orjson.dumps(decoded)) - 2 <= budget


def test_a_rejected_thread_is_a_dead_letter_naming_the_task() -> None:
    record = records_for().rejected(task(), "get_activity_log: HTTP 404", 404, 0.0)
    headers = dict(record.headers)
    assert record.topic == "dlq" and record.key == b"t-1"
    assert headers["dlq.reason"] == b"activity_rejected"
    assert headers["dlq.task_id"] == b"t-1" and headers["dlq.status"] == b"404"


def test_exclusion_and_a_task_without_agent_are_not_wanted() -> None:
    activity = records_for(exclude_agent_ids=["a-2"])
    assert activity.wanted(TaskState("t", "a-1", None))
    assert not activity.wanted(TaskState("t", "a-2", None))
    assert not activity.wanted(TaskState("t", None, None))


def finished_frame(agent: str) -> bytes:
    data = {"id": "t-1", "agent_id": agent, "organization_id": "o-1", "status": "completed"}
    return orjson.dumps({"type": "task_finished", "data": data})


def test_the_normalizer_marks_the_thread_due_and_settles_it_when_written() -> None:
    metrics = Metrics()
    written: list[tuple[str, int, bool]] = []
    normalizer = Normalizer(
        TopicsConfig(),
        KafkaConfig(),
        metrics,
        on_written=lambda t, seq: written.append((t.task_id, seq, t.activity_due)),
        activity=records_for(exclude_agent_ids=["a-2"]),
    )
    state = TaskState("t-1", "a-1", "o-1")
    for record in normalizer.from_frame(state, finished_frame("a-1"), "1", 0.0):
        mark_written(record)
    assert state.finished and state.activity_due
    assert written == [("t-1", 1, True)]
    records = normalizer.from_activity(state, thread_bytes(2, "x"), 0.0)
    assert state.sequence == 1, "the activity record takes no sequence number"
    assert state.activity_due, "due until written"
    for record in records:
        mark_written(record)
    assert not state.activity_due
    assert written[-1] == ("t-1", 1, False), "the hook of the final checkpoint ran"

    def published() -> float | None:
        return metrics.registry.get_sample_value(
            "xpander_bridge_activity_threads_total", {"outcome": ActivityOutcome.PUBLISHED}
        )

    assert not published(), "counted once delivered, when its transaction committed"
    for record in records:
        acknowledge(record)
    assert published() == 1

    excluded = TaskState("t-1", "a-2", "o-1")
    normalizer.from_frame(excluded, finished_frame("a-2"), "1", 0.0)
    assert excluded.finished and not excluded.activity_due


def test_without_an_activity_topic_nothing_is_due() -> None:
    normalizer = Normalizer(TopicsConfig(), KafkaConfig(), Metrics())
    state = TaskState("t-1", "a-1", "o-1")
    normalizer.from_frame(state, finished_frame("a-1"), "1", 0.0)
    assert state.finished and not state.activity_due
