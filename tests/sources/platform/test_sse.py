"""The SSE decoder against the spec's examples and against httpx-sse's decoder."""

from __future__ import annotations

import itertools

from httpx_sse._decoders import SSEDecoder as ReferenceDecoder
from httpx_sse._decoders import SSELineDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sources.platform.sse import SSEDecoder, SSEEvent


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
