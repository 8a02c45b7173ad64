"""An incremental Server-Sent Events decoder working on bytes, with a size limit.

Written to the WHATWG spec (section 9.2.6, "Interpreting an event stream"):
lines end in CRLF, LF or CR; a leading BOM is skipped; ``:`` starts a comment;
``data`` lines are joined with LF; ``id`` persists across events and is
ignored when it contains NUL; ``retry`` takes digits only; a blank line
dispatches. Kept on bytes so the JSON parser reads the payload without a
decode/encode round trip and a malformed frame reaches the dead-letter topic
byte for byte. A test checks it against ``httpx_sse``'s decoder.

Hostile input is bounded: a frame whose data passes ``max_frame_bytes`` is
not kept. Its first ``HEAD_BYTES`` are, and the rest is counted and dropped
as it arrives (linear time, memory bounded by the limit, however long the
line); the frame is dispatched as an ``SSEEvent`` with ``oversized`` set to
its size, for a small dead-letter record. An unterminated line is buffered as
a list of chunks, joined once when it ends (a long line costs what it
weighs, not its square). A ``retry`` with more digits than any sane delay is
clamped.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_FRAME_BYTES", "HEAD_BYTES", "MAX_RETRY_MS", "SSEDecoder", "SSEEvent"]

_BOM = b"\xef\xbb\xbf"
#: of an oversized frame, what is kept for its dead-letter record
HEAD_BYTES = 4096
#: the longest reconnection time a server may ask for (an hour)
MAX_RETRY_MS = 3_600_000
DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
#: room for a field name before its value, in the line limit
_FIELD_SLACK = 16


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. ``id`` is the stream's last event id at dispatch (it
    persists across events, per the spec); ``own_id`` says whether this event's
    block carried an ``id`` line itself, which is what an event identity may use.
    ``oversized`` is the data's size when it passed the limit: ``data`` then
    holds only its first ``HEAD_BYTES``."""

    event: str
    data: bytes
    id: str | None
    retry: int | None
    own_id: bool = False
    oversized: int = 0


class SSEDecoder:
    """Feed it chunks of bytes; it returns the events they complete."""

    __slots__ = (
        "_data",
        "_data_size",
        "_event",
        "_id_in_block",
        "_last_id",
        "_limit",
        "_oversized",
        "_pending",
        "_pending_size",
        "_retry",
        "_skip_lf",
        "_skipping_line",
        "_started",
    )

    def __init__(
        self, last_event_id: str | None = None, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        #: an unterminated line, as the chunks it came in, carried to the next chunk
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._skip_lf = False  # the last chunk ended in CR: a leading LF completes a CRLF
        self._started = False
        self._data: list[bytes] = []
        self._data_size = 0
        self._event = b""
        self._last_id = last_event_id
        self._id_in_block = False
        self._retry: int | None = None
        self._limit = max_frame_bytes
        #: the block's data passed the limit: its size so far (0: it did not)
        self._oversized = 0
        #: the current line passed the limit: drop it up to its end
        self._skipping_line = False

    @property
    def last_event_id(self) -> str | None:
        return self._last_id

    @property
    def retry(self) -> int | None:
        """The server's reconnection time in milliseconds, when it sent one."""
        return self._retry

    @property
    def buffered(self) -> int:
        """Bytes held for lines and events not yet complete (bounded by the limit)."""
        return self._pending_size + self._data_size

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._skipping_line:
            chunk = self._skip_line(chunk)
            if not chunk:
                return []
        if b"\n" not in chunk and b"\r" not in chunk:
            self._hold(chunk)
            return []
        buffer = b"".join((*self._pending, chunk)) if self._pending else chunk
        self._pending.clear()
        self._pending_size = 0
        if not self._started:
            self._started = True
            if buffer.startswith(_BOM):
                buffer = buffer[len(_BOM) :]
        if b"\r" in buffer:
            self._skip_lf = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        rest = lines.pop()
        events = self._lines(lines) if lines else []
        if rest:
            self._hold(rest)
        return events

    def _hold(self, part: bytes) -> None:
        """Part of a line whose end has not come yet."""
        if not self._started:
            if len(part) < len(_BOM) and _BOM.startswith(part):
                self._pending.append(part)
                self._pending_size += len(part)
                return
            self._started = True
            if part.startswith(_BOM):
                part = part[len(_BOM) :]
        self._pending.append(part)
        self._pending_size += len(part)
        if self._pending_size > self._limit + _FIELD_SLACK:
            line = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._skipping_line = True
            if line.startswith(b"data"):
                self._overflow(line.partition(b":")[2].removeprefix(b" "))

    def _skip_line(self, chunk: bytes) -> bytes:
        """Drop the rest of a line that passed the limit; return what follows
        its terminator."""
        ends = [i for i in (chunk.find(b"\n"), chunk.find(b"\r")) if i >= 0]
        if not ends:
            if self._oversized:
                self._oversized += len(chunk)
            return b""
        end = min(ends)
        if self._oversized:
            self._oversized += end
        self._skipping_line = False
        if chunk[end] == 0x0D:  # CR: a CRLF may straddle chunks
            if end + 1 == len(chunk):
                self._skip_lf = True
                return b""
            if chunk[end + 1] == 0x0A:
                end += 1
        return chunk[end + 1 :]

    def _overflow(self, head: bytes) -> None:
        """The block's data passed the limit: keep its head, count the rest."""
        if not self._oversized:
            kept = b"\n".join(self._data)
            self._oversized = self._data_size
            self._data = [(kept + b"\n" + head if kept else head)[:HEAD_BYTES]]
            self._data_size = len(self._data[0]) + 1
        self._oversized += len(head) + 1

    def _dispatch(self) -> SSEEvent | None:
        event = None
        if self._data or self._oversized:
            event = SSEEvent(
                event=self._event.decode("utf-8", "replace") or "message",
                data=b"\n".join(self._data),
                id=self._last_id,
                retry=self._retry,
                own_id=self._id_in_block,
                oversized=self._oversized,
            )
        self._data = []
        self._data_size = 0
        self._oversized = 0
        self._event = b""
        self._id_in_block = False
        return event

    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:  # noqa: C901  (one branch per field of the SSE spec, kept whole on the hot path)
        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
                continue
            if line[0] == 0x3A:  # ':' starts a comment
                continue
            name, sep, value = line.partition(b":")
            if sep and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                if self._oversized or self._data_size + len(value) > self._limit:
                    self._overflow(value)
                else:
                    self._data.append(value)
                    self._data_size += len(value) + 1
            elif name == b"event":
                self._event = value[:256]
            elif name == b"id":
                if b"\x00" not in value:
                    self._last_id = value.decode("utf-8", "replace")
                    self._id_in_block = True
            elif name == b"retry" and value.isdigit():
                # Hundreds of digits would not even convert: clamp first.
                self._retry = MAX_RETRY_MS if len(value) > 9 else min(int(value), MAX_RETRY_MS)
        return events
