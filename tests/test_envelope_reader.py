"""The typed reader of ``bridge.envelope`` (``read_envelope`` and the client
helpers): what the normalizer writes is read back, headers in every shape
clients give them, versions (future minor accepted, other major refused), and
anything else refused with ``InvalidEnvelope`` and nothing else."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.config import KafkaConfig, TopicsConfig
from bridge.core.record import OutRecord
from bridge.core.task import TaskState
from bridge.envelope import (
    SCHEMA_VERSION,
    Envelope,
    InvalidEnvelope,
    RecordHeaders,
    TruncatedData,
    UnsupportedSchemaVersion,
    read_aiokafka,
    read_confluent,
    read_envelope,
)
from bridge.observability.metrics import Metrics
from bridge.transforms.normalize import CE_TYPE_PREFIX, Normalizer

TIME = "2026-11-26T03:00:00.123456+00:00"


def normalized(event_type: str, data: Any, *, max_request_bytes: int = 1_000_000) -> OutRecord:
    """The events-topic record the bridge's normalizer writes for one frame
    (``data`` as JSON text when it is ``bytes``)."""
    normalizer = Normalizer(
        TopicsConfig(), KafkaConfig(max_request_bytes=max_request_bytes), Metrics()
    )
    task = TaskState("t-1", "a-1", "o-1")
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    frame = (
        (
            orjson.dumps(
                {"type": event_type, "task_id": "t-1", "organization_id": "o-1", "time": TIME}
            )
        )[:-1]
        + b',"data":'
        + raw
        + b"}"
    )
    records = normalizer.from_frame(task, frame, "7", 1.0)
    return next(r for r in records if r.topic == TopicsConfig().events)


def value_of(record: OutRecord) -> bytes:
    assert record.value is not None
    return record.value


def body(**changes: Any) -> dict[str, Any]:
    """A valid envelope body (as JSON would give it), with ``changes``."""
    envelope: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": "e-1",
        "type": "task_finished",
        "category": "lifecycle",
        "task_id": "t-1",
        "agent_id": "a-1",
        "organization_id": "o-1",
        "status": "completed",
        "occurred_at": TIME,
        "observed_at": TIME,
        "sequence": 3,
        "source": "sse",
        "sse_id": "3",
        "truncated": False,
        "data": {"id": "t-1", "status": "completed"},
    }
    envelope.update(changes)
    return envelope


def encoded(**changes: Any) -> bytes:
    return json.dumps(body(**changes)).encode()


CE = [("ce_id", b"e-1"), ("ce_type", b"ai.xpander.task.task_finished"), ("ce_subject", b"t-1")]


# -- what the bridge writes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("task_updated", {"id": "t-1", "status": "executing", "unknown_field": [1, 2]}),
        ("chunk", "some text"),
        ("tool_call_request", {"tool_name": "search", "payload": {"q": "x"}}),
        ("future_insight", {"anything": {"nested": True}}),
    ],
)
def test_reads_what_the_normalizer_writes(event_type: str, data: Any) -> None:
    record = normalized(event_type, data)
    envelope = read_envelope(value_of(record), record.headers)
    assert envelope == Envelope.model_validate_json(value_of(record))
    assert envelope.type == event_type
    assert envelope.data == data
    assert dict(record.headers)["ce_id"] == envelope.event_id.encode()


def test_big_integers_are_exact_and_deep_payloads_are_read() -> None:
    big = 123456789012345678901234567890
    data = b'{"big": %d, "deep": %s}' % (big, b"[" * 900 + b"]" * 900)
    record = normalized("future_insight", data)
    envelope = read_envelope(value_of(record), record.headers)
    assert envelope.data["big"] == big
    assert isinstance(envelope.data["big"], int)
    # nineteen digits, but below signed 64 bits: orjson alone reads a float
    low = -9223372036854775809
    record = normalized("future_insight", b'{"low": %d}' % low)
    assert read_envelope(value_of(record), record.headers).data == {"low": low}
    # deeper than Python's recursion limit: orjson reads it (the big integer as a float)
    nested = b"[%d,%s]" % (big, b"[" * 1020 + b"]" * 1020)  # 1,023 levels with the envelope's
    deep = orjson.dumps(body(data=None)).replace(b'"data":null', b'"data":' + nested)
    assert read_envelope(deep).data[0] == float(big)


def test_reads_the_truncated_stub() -> None:
    record = normalized("chunk", "x" * 30_000, max_request_bytes=20_000)
    envelope = read_envelope(value_of(record), record.headers)
    assert envelope.truncated
    stub = TruncatedData.model_validate(envelope.data)
    assert stub.original_bytes > 20_000


def test_ce_type_prefix_is_the_normalizers() -> None:
    from bridge import envelope

    assert envelope._CE_TYPE_PREFIX == CE_TYPE_PREFIX


# -- headers ---------------------------------------------------------------------------


@dataclass
class _Error:
    text: str

    def __str__(self) -> str:
        return self.text


class _ConfluentLike:
    """The methods of ``confluent_kafka.Message`` the helper uses."""

    def __init__(
        self, value: bytes | None, headers: RecordHeaders, error: _Error | None = None
    ) -> None:
        self._value, self._headers, self._error = value, headers, error

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> RecordHeaders:
        return self._headers

    def error(self) -> _Error | None:
        return self._error


@dataclass
class _AiokafkaLike:
    """The attributes of ``aiokafka.ConsumerRecord`` the helper uses."""

    value: bytes | None
    headers: RecordHeaders


HEADER_SHAPES: dict[str, RecordHeaders] = {
    "none (confluent-kafka without headers)": None,
    "empty list": [],
    "aiokafka tuple of (str, bytes)": tuple(CE),
    "confluent list of (str, bytes)": list(CE),
    "dict": dict(CE),
    "str values": [(name, value.decode()) for name, value in CE],
    "bytearray and memoryview values": [
        ("ce_id", bytearray(b"e-1")),
        ("ce_type", memoryview(b"ai.xpander.task.task_finished")),
    ],
    "other headers, null values among them": [
        ("content-type", b"application/json"),
        ("traceparent", None),
        ("ce_source", b"/xpander/organizations/o-1/agents/a-1"),
        *CE,
    ],
    "a repeated header: the last value counts": [("ce_id", b"stale"), *CE],
    "a generator": (pair for pair in CE),
}


@pytest.mark.parametrize("headers", HEADER_SHAPES.values(), ids=HEADER_SHAPES.keys())
def test_headers_in_every_shape(headers: RecordHeaders) -> None:
    assert read_envelope(encoded(), headers).event_id == "e-1"


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ([("ce_id", b"e-2")], "ce_id is 'e-2' but the body says 'e-1'"),
        ({"ce_type": b"ai.xpander.task.chunk"}, "ce_type"),
        ([("ce_type", b"task_finished")], "ce_type"),  # without the prefix
        ([("ce_subject", b"t-2")], "ce_subject"),
        ([("ce_id", None)], "ce_id is null"),
        ([*CE, ("ce_id", b"e-2")], "ce_id"),  # the last one disagrees
        ([("ce_id", b"\xff\xfe")], "ce_id is not UTF-8"),
    ],
)
def test_headers_that_contradict_the_body_are_refused(headers: RecordHeaders, named: str) -> None:
    with pytest.raises(InvalidEnvelope, match=named):
        read_envelope(encoded(), headers)


def test_value_types() -> None:
    value = encoded()
    for given_value in (value, bytearray(value), memoryview(value), value.decode()):
        assert read_envelope(given_value).task_id == "t-1"
    with pytest.raises(InvalidEnvelope, match="tombstone"):
        read_envelope(None)


def test_client_helpers() -> None:
    assert read_confluent(_ConfluentLike(encoded(), list(CE))).event_id == "e-1"
    assert read_confluent(_ConfluentLike(encoded(), None)).event_id == "e-1"
    assert read_aiokafka(_AiokafkaLike(encoded(), tuple(CE))).event_id == "e-1"
    with pytest.raises(InvalidEnvelope, match="consumer error: Broker: Unknown topic"):
        read_confluent(_ConfluentLike(None, None, _Error("Broker: Unknown topic")))
    with pytest.raises(InvalidEnvelope, match="ce_id"):
        read_aiokafka(_AiokafkaLike(encoded(), [("ce_id", b"other")]))


# -- versions --------------------------------------------------------------------------


def test_future_minor_with_new_fields_is_read() -> None:
    envelope = read_envelope(
        encoded(schema_version="1.7", trace_id="abc", replica={"name": "r-1"}), CE
    )
    assert envelope.schema_version == "1.7"
    assert envelope.event_id == "e-1"
    assert not hasattr(envelope, "trace_id")
    assert isinstance(envelope, Envelope)


def test_new_fields_at_this_minor_are_refused() -> None:
    """A record claiming this very version must be one: an unknown field there is
    a typo or corruption, not a later addition."""
    with pytest.raises(InvalidEnvelope, match="trace_id: Extra inputs are not permitted"):
        read_envelope(encoded(trace_id="abc"))


@pytest.mark.parametrize("version", ["2.0", "0.9", "3.14", "10.0"])
def test_other_major_is_refused_with_a_dedicated_error(version: str) -> None:
    with pytest.raises(UnsupportedSchemaVersion) as caught:
        read_envelope(encoded(schema_version=version, new_shape=True), CE)
    error = caught.value
    assert isinstance(error, ValueError)
    assert not isinstance(error, InvalidEnvelope), "except InvalidEnvelope must not swallow it"
    assert (error.seen, error.supported) == (version, SCHEMA_VERSION)
    assert f"'{version}'" in str(error)
    assert "1.x" in str(error)


def test_other_major_is_refused_before_its_shape_is_judged() -> None:
    with pytest.raises(UnsupportedSchemaVersion):
        read_envelope(b'{"schema_version": "2.0", "whatever": []}')


def test_missing_version_is_read_as_the_models_default() -> None:
    value = body()
    del value["schema_version"]
    assert read_envelope(json.dumps(value)).schema_version == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (2, "schema_version is a int"),
        (1.0, "schema_version is a float"),
        (None, "schema_version is a NoneType"),
        ("1", "is not 'major.minor'"),
        ("v1.0", "is not 'major.minor'"),
        ("1.0.0", "is not 'major.minor'"),
        ("1." + "9" * 5000, "is not 'major.minor'"),
        ("\u0661.0", "is not 'major.minor'"),  # an Arabic-Indic one
    ],
)
def test_malformed_versions_are_invalid(version: object, message: str) -> None:
    with pytest.raises(InvalidEnvelope, match=message):
        read_envelope(encoded(schema_version=version))


# -- garbage ---------------------------------------------------------------------------

WORST: dict[str, bytes | str] = {
    "empty bytes": b"",
    "empty str": "",
    "whitespace": b"  \n",
    "not JSON": b"hello",
    "truncated JSON": encoded()[:-5],
    "JSON null": b"null",
    "JSON array": b"[1, 2]",
    "JSON string": b'"an envelope"',
    "JSON number": b"42",
    "empty object": b"{}",
    "a field mistyped": encoded(sequence="three"),
    "a field missing": json.dumps({k: v for k, v in body().items() if k != "event_id"}).encode(),
    "sequence 0": encoded(sequence=0),
    "unknown category": encoded(category="gossip"),
    "bad time": encoded(occurred_at="yesterday"),
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "object nested 100,000 deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "data nested past the parser's limit": orjson.dumps(body(data=None)).replace(
        b'"data":null', b'"data":' + b"[" * 2000 + b"]" * 2000
    ),
    "deep and a long number": b"[" * 5000 + b"12345678901234567890123" + b"]" * 5000,
    "non-UTF-8": b'{"schema_version": "1.0", "event_id": "\xff\xfe"}',
    "non-UTF-8 and a long number": b'{"n": 123456789012345678901234, "s": "\xc3\x28"}',
    "UTF-16 with a BOM": "\ufeff{}".encode("utf-16"),
    "lone surrogate in a str": '{"event_id": "\ud800"}',
    "NaN": b'{"n": NaN}',
    "NaN and a long number": b'{"n": NaN, "m": 123456789012345678901234}',
    "Infinity": b"[Infinity]",
    "an integer of 5,000 digits": b'{"n": ' + b"7" * 5000 + b"}",
    "NUL bytes": b"\x00\x00\x00\x00",
}


@pytest.mark.parametrize("value", WORST.values(), ids=WORST.keys())
def test_worst_inputs_raise_invalid_envelope_and_nothing_else(value: bytes | str) -> None:
    with pytest.raises(InvalidEnvelope):
        read_envelope(value)


def test_errors_say_what_is_wrong_without_echoing_the_input() -> None:
    with pytest.raises(InvalidEnvelope, match=r"^not JSON: "):
        read_envelope(b"hello")
    for value, kind in [
        (b"[1]", "array"),
        (b"null", "null"),
        (b"1.5", "number"),
        (b"true", "boolean"),
    ]:
        with pytest.raises(InvalidEnvelope, match=f"the value is a JSON {kind}$"):
            read_envelope(value)
    huge = "secret-" * 10_000
    with pytest.raises(InvalidEnvelope) as caught:
        read_envelope(encoded(sequence=huge))
    message = str(caught.value)
    assert message.startswith("not an envelope: sequence:")
    assert "secret-" not in message
    with pytest.raises(InvalidEnvelope, match=r"\(and \d+ more\)"):
        read_envelope(b"{}")


def test_not_a_value_at_all_is_a_type_error() -> None:
    """A caller passing an object that is not a record value is a bug, not a bad record."""
    bad: Any = 42
    with pytest.raises(TypeError):
        read_envelope(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_raise_invalid_envelope_or_read(value: bytes) -> None:
    with contextlib.suppress(InvalidEnvelope):
        read_envelope(value)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(body())), _json, max_size=16))
def test_any_json_object_raises_a_reader_error_or_reads(fields: dict[str, Any]) -> None:
    with contextlib.suppress(InvalidEnvelope, UnsupportedSchemaVersion):
        read_envelope(json.dumps(fields).encode(), CE)


def test_an_envelope_without_a_task_id_is_refused() -> None:
    # (found by the property test below: task_id "" was read as an envelope)
    with pytest.raises(InvalidEnvelope, match="task_id"):
        read_envelope(encoded(task_id=""))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(body())), _json)
@example("task_id", "")
def test_one_field_replaced_by_any_json(name: str, replacement: Any) -> None:
    try:
        envelope = read_envelope(encoded(**{name: replacement}))
    except (InvalidEnvelope, UnsupportedSchemaVersion):
        return
    assert envelope.task_id  # read: then it is an envelope


# -- the module stays light ------------------------------------------------------------


def test_importing_the_module_loads_no_kafka_client_and_nothing_else_of_the_bridge() -> None:
    code = (
        "import sys, bridge.envelope\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('bridge', 'confluent_kafka', 'aiokafka', 'aiohttp', 'yaml', 'prometheus_client')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "['bridge', 'bridge.envelope']"
