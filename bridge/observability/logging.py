"""Logs: one JSON object per line (time, level, logger, message, then the
record's ``extra`` fields), or plain text for a person at a terminal.

Secrets never reach a log line: the configured secret values are registered
at start-up and any occurrence in a message or field is replaced, as a last
line of defence behind the rule of never logging them in the first place.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "register_secret"]

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_SECRETS: set[str] = set()
_MASK = "**********"


def register_secret(value: str | None) -> None:
    """Never print this value; short values are ignored (they would mask words)."""
    if value and len(value) >= 6:
        _SECRETS.add(value)


def _redact(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _jsonable(value: Any) -> Any:
    if isinstance(value, str):
        return _redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return _redact(str(value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _redact(record.getMessage()),
        }
        for key, value in _fields(record).items():
            entry[key] = _jsonable(value)
        if record.exc_info:
            entry["exception"] = _redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extras = " ".join(f"{k}={_jsonable(v)}" for k, v in _fields(record).items())
        line = f"{time} {record.levelname:<7} {record.name}: {_redact(record.getMessage())}"
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + _redact(self.formatException(record.exc_info))
        return line


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Route every logger through one handler in the chosen format."""
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries log their own retries at INFO; ours say what matters.
    for noisy in ("bridge.kafka.librdkafka", "httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
