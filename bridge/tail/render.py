"""How ``tail`` prints: one line per record for people (LLM chunks as running
text with ``--text``), or each value as stored, one per line, for ``jq``.

Everything shown comes from the topic, so from anyone who can write to it:
control characters (a terminal escape sequence is one) and bidirectional
overrides are shown escaped, and every field is capped.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import UTC, datetime
from typing import IO, Any, Protocol, TextIO

import orjson

from bridge.envelope import LIFECYCLE_TYPES
from bridge.tail.records import Kind, View, header_text

__all__ = ["HumanPrinter", "JsonPrinter", "Printer", "StatusMemory", "clean"]

SUMMARY_CHARS = 160
FIELD_CHARS = 40
CHUNK_CHARS = 4000
TASK_CHARS = 8
TYPE_WIDTH = 20
#: statuses remembered to show changes; the oldest are forgotten beyond this
_TRACKED_TASKS = 50_000

_RESET = "\x1b[0m"
_DIM, _BOLD, _RED, _GREEN, _YELLOW, _MAGENTA, _CYAN = "2", "1", "31", "32", "33", "35", "36"
_STATUS_COLOUR = {"completed": _GREEN, "failed": _RED, "error": _RED, "stopped": _YELLOW}

_UNSAFE: dict[int, str] = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_UNSAFE.update(
    {c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029)}
)
#: running text keeps its line breaks and tabs
_UNSAFE_IN_TEXT = {c: s for c, s in _UNSAFE.items() if c not in (0x09, 0x0A)}


def clean(text: str, limit: int, *, keep_lines: bool = False) -> str:
    """*text* with control and bidi characters escaped, cut to *limit* characters."""
    escaped = text[:limit].translate(_UNSAFE_IN_TEXT if keep_lines else _UNSAFE)
    if len(text) > limit or len(escaped) > limit:
        return escaped[: limit - 1] + "…"
    return escaped


def _compact(value: Any) -> str:
    """One-line JSON of an already parsed value, whatever it holds."""
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):  # integers past 64 bits, too deep
        pass
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (ValueError, TypeError, RecursionError):
        return "<unprintable>"


class Printer(Protocol):
    def show(self, view: View, before: str | None) -> None:
        """Print *view*; *before* is its task's status before it, when known."""

    def finish(self) -> None: ...


class JsonPrinter:
    """Each value exactly as stored, one per line, flushed line by line. A value
    that is not JSON would break ``jq``: it is left out, with a note on stderr."""

    def __init__(self, out: IO[bytes], err: TextIO) -> None:
        self._out = out
        self._err = err

    def show(self, view: View, before: str | None = None) -> None:
        message = view.message
        where = f"{message.topic}/{message.partition}@{message.offset}"
        if message.value is None:
            self._note(f"{where} is a tombstone (no value)")
            return
        if not view.is_json:
            self._note(f"{where} is not JSON ({len(message.value)} bytes), left out")
            return
        value = message.value
        if b"\n" in value or b"\r" in value:
            # outside strings (where JSON forbids them) line breaks are whitespace
            value = value.replace(b"\r", b" ").replace(b"\n", b" ")
        self._out.write(value + b"\n")
        self._out.flush()

    def finish(self) -> None:
        self._out.flush()

    def _note(self, text: str) -> None:
        print(f"xpander-bridge tail: {clean(text, 300)}", file=self._err, flush=True)


class StatusMemory:
    """Each task's last status, from every lifecycle record read (shown or
    filtered out), so a change shows as one: ``executing -> completed``."""

    def __init__(self, limit: int = _TRACKED_TASKS) -> None:
        self._statuses: OrderedDict[str, str] = OrderedDict()
        self._limit = limit

    def update(self, view: View) -> str | None:
        """Record *view*'s status; return the task's status before it, if known."""
        if view.status is None or view.task_id is None:
            return None
        before = self._statuses.pop(view.task_id, None)
        if view.type != "task_finished":
            self._statuses[view.task_id] = view.status
            if len(self._statuses) > self._limit:
                self._statuses.popitem(last=False)  # the task seen longest ago
        return before


class HumanPrinter:
    """``HH:MM:SS.mmm  task  type  [status change]  summary``, one line per record.

    With ``text``, ``chunk`` events are the LLM's output as it streams: their
    text runs on, after the time and task it started with, until another
    task's chunk or any other record breaks the run.
    """

    def __init__(self, out: TextIO, *, color: bool, text: bool) -> None:
        self._out = out
        self._color = color
        self._text = text
        self._text_task: str | None = None
        self._text_ends_line = False

    def show(self, view: View, before: str | None = None) -> None:
        if self._text and view.kind is Kind.ENVELOPE and view.type == "chunk":
            data = view.parsed.get("data")
            if isinstance(data, str):
                self._run_on(view, data)
                return
        self._end_text()
        self._out.write(self.line(view, before) + "\n")
        self._out.flush()

    def finish(self) -> None:
        self._end_text()
        self._out.flush()

    # -- one line ---------------------------------------------------------------

    def line(self, view: View, before: str | None = None) -> str:
        head = f"{self._paint(_when(view), _DIM)}  {self._task(view.task_id)}  "
        if view.kind is Kind.ENVELOPE:
            kind = clean(view.type or "", FIELD_CHARS)
            bold = view.type in LIFECYCLE_TYPES
            parts = [self._paint(f"{kind:<{TYPE_WIDTH}}", _BOLD if bold else "")]
            status = self._status(view.status, before)
            if status:
                parts.append(status)
            parts.append(_envelope_summary(view.parsed))
        elif view.kind is Kind.DEAD_LETTER:
            reason = clean(header_text(view.message, "dlq.reason") or "", FIELD_CHARS)
            parts = [self._paint(f"{'dlq ' + reason:<{TYPE_WIDTH}}", _RED), _dead_letter(view)]
        elif view.kind is Kind.TOMBSTONE:
            parts = [self._paint(f"{'(tombstone)':<{TYPE_WIDTH}}", _YELLOW)]
        else:
            raw = view.message.value or b""
            label = "(not an envelope)" if view.is_json else "(not JSON)"
            preview = clean(raw[: SUMMARY_CHARS * 4].decode("utf-8", "replace"), SUMMARY_CHARS)
            parts = [self._paint(f"{label:<{TYPE_WIDTH}}", _YELLOW), preview]
        return (head + "  ".join(parts)).rstrip()

    def _task(self, task_id: str | None) -> str:
        short = clean(task_id or "-", TASK_CHARS * 4)[:TASK_CHARS]
        return self._paint(f"{short:<{TASK_CHARS}}", _MAGENTA)

    def _status(self, status: str | None, before: str | None) -> str | None:
        """The status, and the one before it when it changed (``executing -> completed``)."""
        if status is None:
            return None
        shown = clean(status, FIELD_CHARS)
        now = self._paint(shown, _BOLD + ";" + _STATUS_COLOUR.get(status, _CYAN))
        if before is not None and before != status:
            return f"{clean(before, FIELD_CHARS)} {self._paint('->', _DIM)} {now}"
        return now

    def _paint(self, text: str, style: str) -> str:
        if not self._color or not style:
            return text
        return f"\x1b[{style}m{text}{_RESET}"

    # -- running text -----------------------------------------------------------

    def _run_on(self, view: View, text: str) -> None:
        if self._text_task != view.task_id:
            self._end_text()
            self._out.write(f"{self._paint(_when(view), _DIM)}  {self._task(view.task_id)}  ")
            self._text_task = view.task_id
        shown = clean(text, CHUNK_CHARS, keep_lines=True)
        if shown:
            self._out.write(shown)
            self._text_ends_line = shown.endswith("\n")
        self._out.flush()

    def _end_text(self) -> None:
        if self._text_task is not None:
            if not self._text_ends_line:
                self._out.write("\n")
            self._text_task = None
            self._text_ends_line = False


def _when(view: View) -> str:
    """The event's time (``occurred_at``; for other records, the record's
    timestamp) in local time, to the millisecond."""
    moment: datetime | None = None
    try:
        if view.kind is Kind.ENVELOPE and isinstance(view.parsed.get("occurred_at"), str):
            moment = datetime.fromisoformat(view.parsed["occurred_at"])
        elif view.message.timestamp > 0:
            moment = datetime.fromtimestamp(view.message.timestamp / 1000, UTC)
        if moment is not None:
            local = moment.astimezone()
            return f"{local:%H:%M:%S}.{local.microsecond // 1000:03d}"
    except (ValueError, OverflowError, OSError):
        pass
    return "--:--:--.---"


def _envelope_summary(envelope: dict[str, Any]) -> str:
    data = envelope.get("data")
    kind = envelope.get("type")
    if envelope.get("truncated") is True and isinstance(data, dict):
        text = (
            f"truncated: {data.get('original_bytes')} bytes in "
            f"{data.get('dlq_topic')} ({data.get('parts')} parts)"
        )
    elif kind in LIFECYCLE_TYPES and isinstance(data, dict):
        text = _lifecycle(envelope, data)
    elif isinstance(data, dict) and isinstance(data.get("tool_name"), str):
        result = kind == "tool_call_result"
        outcome = (" error" if data.get("is_error") else " ok") if result else ""
        detail = data.get("result") if result else data.get("payload")
        tool = "" if data["tool_name"] == kind else data["tool_name"]  # think, analyze
        text = f"{tool}{outcome} {_compact(detail)}".lstrip()
    else:
        text = _compact(data)
    return clean(text, SUMMARY_CHARS)


def _lifecycle(envelope: dict[str, Any], task: dict[str, Any]) -> str:
    parts: list[str] = []
    if envelope.get("type") == "task_created" and envelope.get("agent_id"):
        parts.append(f"agent {envelope['agent_id']}")
    given = task.get("input")
    if envelope.get("type") == "task_created" and isinstance(given, dict) and given.get("text"):
        parts.append(f"input {_compact(given['text'])}")
    if envelope.get("type") == "task_finished" and task.get("result"):
        parts.append(f"result {_compact(task['result'])}")
    if envelope.get("source") not in (None, "sse"):
        parts.append(f"({envelope['source']})")
    return " ".join(str(part) for part in parts)


def _dead_letter(view: View) -> str:
    message = view.message
    parts = [header_text(message, "dlq.error") or ""]
    origin = header_text(message, "dlq.original_topic")
    if origin is not None:
        partition = header_text(message, "dlq.original_partition")
        offset = header_text(message, "dlq.original_offset")
        parts.append(f"from {origin}/{partition}@{offset}")
    part, count = header_text(message, "dlq.part"), header_text(message, "dlq.parts")
    if part is not None:
        parts.append(f"part {part}/{count}")
    value = message.value or b""
    parts.append(f"{len(value)} bytes: " + value[:SUMMARY_CHARS].decode("utf-8", "replace"))
    return clean("  ".join(p for p in parts if p), SUMMARY_CHARS)
