"""The exact path for payloads the fast encoder would change or refuse.

orjson (the hot path) turns integers beyond 64 bits into floats when it
parses, and refuses to write nesting deeper than 254 levels. Neither may
change what consumers get: the envelope carries every payload value exactly
as the platform sent it. So when a frame holds a long run of digits (a big
integer, or a number with more digits than a double keeps), or the fast
encoder refuses the envelope, the ``data`` member is spliced in as the raw
bytes the platform sent (``orjson.Fragment``): no re-parse, no re-encode, any
depth. The frame was already validated by the parser, so the span finder
only needs the structure: it tokenizes strings and punctuation with one
regular expression and tracks depth without recursion (linear time).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

__all__ = ["data_span", "encode_exact", "needs_exact"]

#: 20 digits in a row, or 19 after a minus: past what orjson parses as an
#: integer (unsigned 64-bit up to 18446744073709551615, signed down to
#: -9223372036854775808; beyond, a float). Found by mapping every digit to "0",
#: "-" to itself and everything else to " " (one C pass) and looking for the
#: two runs: 0.9 us for a typical 600-byte frame against 8.3 us for the
#: regular expression \d{20}, which was 4% of the event loop at 10,000 streams.
_DIGITS_AS_ZERO = bytes(
    0x30 if 0x30 <= byte <= 0x39 else byte if byte == 0x2D else 0x20 for byte in range(256)
)
_LONG_RUN = b"0" * 20
_LONG_NEGATIVE_RUN = b"-" + b"0" * 19
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\],:]', re.DOTALL)
_WHITESPACE = b" \t\r\n"
_OPEN = frozenset(b"{[")
_CLOSE = frozenset(b"}]")


def needs_exact(frame: bytes) -> bool:
    """Whether the fast parser may have changed a value of this frame (a cheap
    over-approximation: digits inside strings count too; the exact path is
    then merely slower)."""
    shape = frame.translate(_DIGITS_AS_ZERO)
    return _LONG_RUN in shape or _LONG_NEGATIVE_RUN in shape


def _is_data_key(token: bytes) -> bool:
    if token == b'"data"':
        return True
    return b"\\" in token and orjson.loads(token) == "data"  # an escaped spelling


def data_span(frame: bytes) -> tuple[int, int] | None:
    """Where the value of the top-level ``data`` member is in a valid JSON object
    (the last one, as parsers keep the last of duplicate keys)."""
    found = None
    for key, start, end in _members(frame):
        if _is_data_key(key):
            found = (start, end)
    if found is None:
        return None
    start, end = found
    while start < end and frame[start] in _WHITESPACE:
        start += 1
    while end > start and frame[end - 1] in _WHITESPACE:
        end -= 1
    return (start, end) if start < end else None


def _members(frame: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(key token, value start, value end) of each member of the top-level object."""
    depth = 0
    key = b""
    value_start = -1
    for match in _TOKEN.finditer(frame):
        token = match.group()
        first = token[0]
        if first == 0x22:  # a string: a key when one is expected at the top level
            if depth == 1 and value_start < 0:
                key = token
        elif first in _OPEN:
            depth += 1
        elif first in _CLOSE or (depth == 1 and first == 0x2C):  # a member ends
            if depth == 1 and value_start >= 0:
                yield key, value_start, match.start()
            value_start = -1 if depth == 1 else value_start
            depth -= first != 0x2C
        elif depth == 1:  # ':'
            value_start = match.end()


def encode_exact(envelope: dict[str, Any], frame: bytes) -> bytes | None:
    """The envelope with ``data`` as the frame's own bytes; ``None`` when the
    frame has no ``data`` member to splice (its value is then null anyway)."""
    span = data_span(frame)
    if span is None:
        return None
    exact = dict(envelope)
    exact["data"] = orjson.Fragment(frame[span[0] : span[1]])
    return orjson.dumps(exact)
