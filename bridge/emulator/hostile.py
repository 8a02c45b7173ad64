"""Bytes for the hostile knobs that must not be held in memory: a JSON answer
padded to N bytes, an SSE ``data:`` line of N bytes. Both are written from a
generator that re-yields one block of at most ``CHUNK`` bytes, so a 200 MB
answer costs 64 KiB of memory, and ``StreamResponse.write`` waits for the socket
to drain between blocks (aiohttp drains once its buffer passes 64 KiB).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web

__all__ = ["CHUNK", "PAD_FIELD", "huge_data_line", "pad_json", "repeated", "send_padded"]

CHUNK = 64 * 1024
#: the field an oversized JSON answer carries its padding in
PAD_FIELD = "_padding"
_PAD_OPEN = b'"' + PAD_FIELD.encode() + b'":"'


def repeated(fill: bytes, size: int) -> Iterator[bytes]:
    """``size`` bytes of ``fill`` repeated, in blocks of about ``CHUNK`` bytes."""
    if size <= 0:
        return
    block = fill * max(1, CHUNK // len(fill))
    full, rest = divmod(size, len(block))
    for _ in range(full):
        yield block
    if rest:
        yield block[:rest]


def huge_data_line(size: int, fill: bytes) -> Iterator[bytes]:
    """One SSE frame: ``data: `` then ``size`` bytes of ``fill``, then the blank line."""
    yield b"data: "
    yield from repeated(fill, size)
    yield b"\n\n"


def pad_json(body: bytes, size: int) -> tuple[bytes, int, bytes] | None:
    """Split a compact JSON object or array into (head, padding length, tail) so
    that ``head + b"x" * padding + tail`` is ``size`` bytes of valid JSON (or the
    body with an empty padding field, when it is already that long). The padding
    is a string field of the object, or of the array's first item; an empty
    array gets one item holding only the padding. None for other JSON."""
    if body.startswith(b"[{"):
        at = 2
    elif body.startswith(b"{"):
        at = 1
    elif body == b"[]":
        head, tail = b"[{" + _PAD_OPEN, b'"}]'
        return head, max(0, size - len(head) - len(tail)), tail
    else:
        return None
    head = body[:at] + _PAD_OPEN
    tail = (b'"' if body[at : at + 1] == b"}" else b'",') + body[at:]
    return head, max(0, size - len(head) - len(tail)), tail


async def send_padded(
    request: web.Request, answer: web.Response, size: int, *, content_length: bool
) -> web.StreamResponse:
    """Send ``answer`` (a JSON response not yet sent) padded to ``size`` bytes,
    with a Content-Length or chunked. Answers that are not a JSON object or
    array go out unchanged."""
    body = answer.body
    parts = pad_json(body, size) if isinstance(body, bytes) else None
    if parts is None:
        return answer
    head, padding, tail = parts
    out = web.StreamResponse(status=answer.status)
    out.content_type = "application/json"
    if content_length:
        out.content_length = len(head) + padding + len(tail)
    else:
        out.enable_chunked_encoding()
    await out.prepare(request)
    try:
        await out.write(head)
        for block in repeated(b"x", padding):
            await out.write(block)
        await out.write(tail)
        await out.write_eof()
    except ConnectionResetError:
        pass  # the client gave up on it, as a size cap would
    return out
