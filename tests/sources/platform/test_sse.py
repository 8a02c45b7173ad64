"""The SSE decoder against the spec's examples and against httpx-sse's decoder."""

from __future__ import annotations

import itertools

import pytest
from httpx_sse._decoders import SSEDecoder as ReferenceDecoder
from httpx_sse._decoders import SSELineDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sources.platform.sse import HEAD_BYTES, MAX_RETRY_MS, SSEDecoder, SSEEvent


def decode_all(stream: bytes, cuts: list[int] | None = None) -> list[SSEEvent]:
    decoder = SSEDecoder()
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts or [])})
    events: list[SSEEvent] = []
    for start, end in itertools.pairwise(points):
        events.extend(decoder.feed(stream[start:end]))
    return events


def test_spec_example_multiline_data_and_ids() -> None:
    stream = b": comment\ndata: first\ndata: second\nid: 7\n\nevent: custom\ndata:x\n\n"
    events = decode_all(stream)
    assert events == [
        SSEEvent(event="message", data=b"first\nsecond", id="7", retry=None, own_id=True),
        # The last id persists, but this event did not carry one of its own.
        SSEEvent(event="custom", data=b"x", id="7", retry=None, own_id=False),
    ]


def test_crlf_split_across_chunks_is_one_terminator() -> None:
    stream = b"data: a\r\n\r\ndata: b\r\r"
    for cut in range(len(stream) + 1):
        assert [e.data for e in decode_all(stream, [cut])] == [b"a", b"b"]


def test_bom_retry_and_nul_id() -> None:
    stream = b"\xef\xbb\xbfretry: 1500\nid: ok\n\nid: bad\x00\ndata: d\n\nretry: x1\n"
    decoder = SSEDecoder()
    events = decoder.feed(stream[:2]) + decoder.feed(stream[2:])
    assert events == [SSEEvent(event="message", data=b"d", id="ok", retry=1500, own_id=False)]
    assert decoder.retry == 1500
    assert decoder.last_event_id == "ok"


def test_event_without_terminating_blank_line_is_not_dispatched() -> None:
    assert decode_all(b"data: pending\n") == []


def reference(stream: bytes) -> list[tuple[str, str, str]]:
    """httpx-sse's decoding, keeping events with data: httpx-sse also dispatches an
    event for a blank line after an ``id`` alone, which the spec does not (and
    the bridge skips empty-data events anyway, as the official client does)."""
    lines = SSELineDecoder().decode(stream.decode()) + SSELineDecoder().flush()
    decoder = ReferenceDecoder()
    out = []
    for line in lines:
        event = decoder.decode(line)
        if event is not None and event.data:
            out.append((event.event, event.data, event.id))
    return out


FIELD = st.sampled_from(["data", "event", "id", "retry", ":", "data", "data"])
VALUE = st.text(alphabet=st.sampled_from('ab {}"1:'), max_size=6)
LINE = st.tuples(FIELD, st.sampled_from([": ", ":", ""]), VALUE).map("".join)
EOL = st.sampled_from(["\n", "\r\n", "\r"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(LINE, EOL, st.booleans()), max_size=12),
    st.lists(st.integers(min_value=0, max_value=400), max_size=4),
)
def test_agrees_with_httpx_sse(parts: list[tuple[str, str, bool]], cuts: list[int]) -> None:
    text = "".join(line + eol + (eol if blank else "") for line, eol, blank in parts) + "\n\n"
    stream = text.encode()
    events = decode_all(stream, cuts)
    ours = [(e.event, e.data.decode(), e.id or "") for e in events if e.data]
    assert ours == reference(stream)


# --- hostile input: limits ------------------------------------------------------


def feed_in(decoder: SSEDecoder, stream: bytes, size: int) -> list[SSEEvent]:
    events: list[SSEEvent] = []
    for start in range(0, len(stream), size):
        events += decoder.feed(stream[start : start + size])
    return events


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("chunk", [7, 4096, 1 << 20])
def test_an_oversized_frame_is_skipped_and_the_stream_goes_on(eol: bytes, chunk: int) -> None:
    big = b"x" * 300_000
    stream = (
        b"data: before"
        + eol
        + eol
        + b"id: 9"
        + eol
        + b"data: "
        + big
        + eol
        + b"data: more"
        + eol
        + eol
        + b"data: after"
        + eol
        + eol
    )
    decoder = SSEDecoder(max_frame_bytes=10_000)
    events = feed_in(decoder, stream, chunk)
    assert [e.data for e in events if not e.oversized] == [b"before", b"after"]
    (skipped,) = [e for e in events if e.oversized]
    assert skipped.id == "9" and skipped.own_id
    assert skipped.data == big[:HEAD_BYTES]
    assert len(big) <= skipped.oversized <= len(big) + 16
    assert decoder.buffered == 0


def test_a_line_without_end_is_never_held_past_the_limit() -> None:
    decoder = SSEDecoder(max_frame_bytes=10_000)
    decoder.feed(b"data: ")
    most = 0
    for _ in range(2_000):  # 2 MB of one line, in 1 KB chunks
        assert decoder.feed(b"y" * 1024) == []
        most = max(most, decoder.buffered)
    assert most <= 10_000 + 16 + 1024 + HEAD_BYTES
    (event,) = decoder.feed(b"\n\ndata: next\n\n")[:1]
    assert event.oversized >= 2_000 * 1024 and event.data == b"y" * HEAD_BYTES


def test_absurd_retry_values_are_clamped() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"retry: " + b"9" * 400 + b"\n\n")
    assert decoder.retry == MAX_RETRY_MS
    decoder.feed(b"retry: 99999999\n\n")
    assert decoder.retry == MAX_RETRY_MS
    decoder.feed(b"retry: 2500\n\n")
    assert decoder.retry == 2500


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0, max_value=3000), max_size=6))
def test_arbitrary_bytes_never_raise_and_stay_bounded(stream: bytes, cuts: list[int]) -> None:
    limit = 256
    decoder = SSEDecoder(max_frame_bytes=limit)
    bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    for start, end in itertools.pairwise(bounds):
        for event in decoder.feed(stream[start:end]):
            assert event.oversized or len(event.data) <= limit
            assert len(event.data) <= max(limit, HEAD_BYTES)
        assert decoder.buffered <= limit + 16 + (end - start) + HEAD_BYTES


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(LINE, EOL, st.booleans()), max_size=12),
    st.lists(st.integers(min_value=0, max_value=400), max_size=4),
)
def test_under_the_limit_the_limit_changes_nothing(
    parts: list[tuple[str, str, bool]], cuts: list[int]
) -> None:
    text = "".join(line + eol + (eol if blank else "") for line, eol, blank in parts) + "\n\n"
    stream = text.encode()
    small = SSEDecoder(max_frame_bytes=100)  # every frame here is under 100 bytes
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    events = [e for a, b in itertools.pairwise(points) for e in small.feed(stream[a:b])]
    assert events == SSEDecoder().feed(stream)
