"""`xpander-bridge tail`, as a user runs it: a subprocess against a broker
holding known records (envelopes as the bridge writes them, several tasks,
agents and types, a few hostile records)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.kafka import KafkaService, OutRecord, create_topics, produce

from bridge.envelope import CATEGORY_BY_TYPE, Envelope
from bridge.tail.options import parse_since

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(90)

TASK_A = "2f6c0e3a-9b1d-4c3e-8f00-0a1b2c3d4e5f"
TASK_B = "7d41aa02-5e6f-4a70-9b81-c2d3e4f50617"
TASK_C = "c0ffee00-1234-4567-89ab-cdef01234567"
ORG = "org-emulator"
#: 03:00:01.250 UTC: the human output is checked with TZ=UTC
BASE_TIME_MS = 1_795_662_001_250


@dataclass(frozen=True)
class Sent:
    value: bytes
    envelope: dict[str, Any]
    timestamp_ms: int | None = None

    @property
    def task_id(self) -> str:
        return str(self.envelope["task_id"])


def _iso(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}000+00:00"


def _envelope(
    task_id: str, agent_id: str, type_: str, sequence: int, data: Any, status: str | None = None
) -> dict[str, Any]:
    """An envelope as the bridge's normalizer writes it, validated by the model."""
    occurred = BASE_TIME_MS + (sequence - 1) * 100
    envelope = {
        "schema_version": "1.0",
        "event_id": f"{task_id[:8]}{sequence:024x}",
        "type": type_,
        "category": str(CATEGORY_BY_TYPE.get(type_, "other")),
        "task_id": task_id,
        "agent_id": agent_id,
        "organization_id": ORG,
        "status": status,
        "occurred_at": _iso(occurred),
        "observed_at": _iso(occurred + 1),
        "sequence": sequence,
        "source": "sse",
        "sse_id": str(sequence),
        "truncated": False,
        "data": data,
    }
    Envelope.model_validate(envelope)
    return envelope


def _task(task_id: str, agent_id: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"id": task_id, "agent_id": agent_id, "organization_id": ORG, "status": status, **extra}


def _tool(name: str, call: str, result: Any = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "request_id": call,
        "tool_call_id": call,
        "tool_name": name,
        "payload": {"query": "open tickets", "limit": 5},
    }
    if result is not None:
        data.update(result=result, is_error=False)
    return data


def story() -> list[dict[str, Any]]:
    """Three tasks of two agents: created, executing, output, tools, an end each."""
    a, b, c = TASK_A, TASK_B, TASK_C
    return [
        _envelope(a, "agent-1", "task_created", 1, _task(a, "agent-1", "pending"), "pending"),
        _envelope(b, "agent-2", "task_created", 1, _task(b, "agent-2", "pending"), "pending"),
        _envelope(a, "agent-1", "task_updated", 2, _task(a, "agent-1", "executing"), "executing"),
        _envelope(a, "agent-1", "chunk", 3, "The order ships "),
        _envelope(b, "agent-2", "task_updated", 2, _task(b, "agent-2", "executing"), "executing"),
        _envelope(a, "agent-1", "chunk", 4, "from the north warehouse."),
        _envelope(a, "agent-1", "tool_call_request", 5, _tool("crm_lookup", "call-1")),
        _envelope(b, "agent-2", "chunk", 3, "Refund policy: "),
        _envelope(a, "agent-1", "tool_call_result", 6, _tool("crm_lookup", "call-1", {"rows": 3})),
        _envelope(c, "agent-1", "task_created", 1, _task(c, "agent-1", "pending"), "pending"),
        _envelope(
            b, "agent-2", "task_finished", 4, _task(b, "agent-2", "failed", result="no"), "failed"
        ),
        _envelope(
            a,
            "agent-1",
            "task_finished",
            7,
            _task(a, "agent-1", "completed", result="Done: 3 rows."),
            "completed",
        ),
        _envelope(c, "agent-1", "task_finished", 2, _task(c, "agent-1", "stopped"), "stopped"),
    ]


def _headers(envelope: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The CloudEvents headers the bridge puts on every envelope."""
    return [
        ("ce_specversion", b"1.0"),
        ("content-type", b"application/json"),
        ("ce_id", envelope["event_id"].encode()),
        ("ce_source", f"/xpander/organizations/{ORG}/agents/{envelope['agent_id']}".encode()),
        ("ce_type", f"ai.xpander.task.{envelope['type']}".encode()),
        ("ce_time", envelope["occurred_at"].encode()),
        ("ce_subject", envelope["task_id"].encode()),
    ]


async def publish(
    kafka: KafkaService,
    topic: str,
    envelopes: list[dict[str, Any]],
    timestamp_ms: int | None = None,
) -> list[Sent]:
    sent = [Sent(orjson.dumps(e), e, timestamp_ms) for e in envelopes]
    records = [
        OutRecord(
            value=s.value,
            key=s.task_id.encode(),
            headers=_headers(s.envelope),
            timestamp_ms=timestamp_ms,
        )
        for s in sent
    ]
    await produce(kafka.bootstrap_servers, topic, records)
    return sent


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XPANDER", "KAFKA")) and k != "NO_COLOR"
    }
    return {**clean, "TZ": "UTC", **(extra or {})}


def tail_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge", "tail", *args]


def run_tail(
    *args: str, env: dict[str, str] | None = None, timeout: float = 40
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tail_argv(*args),
        capture_output=True,
        text=True,
        env=_env(env),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


async def tail(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_tail, *args, env=env)


def json_lines(stdout: str) -> list[bytes]:
    return [line.encode() for line in stdout.splitlines() if line]


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


@pytest.fixture
async def events_topic(kafka: KafkaService, new_topic: Callable[[str], str]) -> str:
    topic = new_topic("events")
    await create_topics(kafka.bootstrap_servers, topic, partitions=3)
    return topic


@pytest.fixture
async def stored(kafka: KafkaService, events_topic: str) -> list[Sent]:
    """The story, on the events topic."""
    return await publish(kafka, events_topic, story())


def _read(kafka: KafkaService, topic: str, *extra: str) -> tuple[str, ...]:
    return ("--bootstrap", kafka.bootstrap_servers, "--topic", topic, *extra)


# -- --json ------------------------------------------------------------------------------


async def test_json_lines_are_the_values_as_stored(
    kafka: KafkaService, events_topic: str, stored: list[Sent]
) -> None:
    result = await tail(
        *_read(kafka, events_topic, "--json", "--from-beginning", "--idle-exit", "2")
    )
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    lines = json_lines(result.stdout)
    # every value exactly as produced, each once (partitions interleave)
    assert sorted(lines) == sorted(s.value for s in stored)
    assert sorted(orjson.loads(line)["event_id"] for line in lines) == sorted(
        s.envelope["event_id"] for s in stored
    )
    # and in order within each task (its partition)
    for task in (TASK_A, TASK_B, TASK_C):
        seen = [orjson.loads(line)["sequence"] for line in lines if task.encode() in line]
        assert seen == sorted(seen), (task, seen)
    assert "\x1b" not in result.stdout


# -- filters -------------------------------------------------------------------------------


def _by_task_prefix(envelope: dict[str, Any]) -> bool:
    return bool(envelope["task_id"] == TASK_A)


@pytest.mark.parametrize(
    ("flags", "wanted"),
    [
        (("--task", TASK_A[:8]), _by_task_prefix),
        (("--task", TASK_B, "--task", TASK_C), lambda e: e["task_id"] in (TASK_B, TASK_C)),
        (("--agent", "agent-2"), lambda e: e["agent_id"] == "agent-2"),
        (
            ("--type", "chunk", "--type", "task_created"),
            lambda e: e["type"] in ("chunk", "task_created"),
        ),
        (
            ("--status", "failed", "--status", "stopped"),
            lambda e: e["status"] in ("failed", "stopped"),
        ),
        (
            ("--agent", "agent-1", "--type", "task_finished"),
            lambda e: e["agent_id"] == "agent-1" and e["type"] == "task_finished",
        ),
    ],
    ids=["task-prefix", "tasks", "agent", "types", "statuses", "agent-and-type"],
)
async def test_filters(
    kafka: KafkaService,
    events_topic: str,
    stored: list[Sent],
    flags: tuple[str, ...],
    wanted: Callable[[dict[str, Any]], bool],
) -> None:
    result = await tail(
        *_read(kafka, events_topic, "--json", "--from-beginning", "--idle-exit", "2", *flags)
    )
    assert result.returncode == 0, result.stderr
    expected = sorted(s.value for s in stored if wanted(s.envelope))
    assert expected, "the filter must select something"
    assert len(expected) < len(stored), "and leave something out"
    assert sorted(json_lines(result.stdout)) == expected


# -- where reading starts -------------------------------------------------------------------


async def test_since_shows_only_records_newer_than_that(
    kafka: KafkaService, events_topic: str
) -> None:
    now_ms = int(time.time() * 1000)
    envelopes = story()
    old = await publish(kafka, events_topic, envelopes[:6], timestamp_ms=now_ms - 2 * 3_600_000)
    recent = await publish(kafka, events_topic, envelopes[6:], timestamp_ms=now_ms - 60_000)
    assert old and recent

    result = await tail(*_read(kafka, events_topic, "--json", "--since", "30m", "--idle-exit", "2"))
    assert result.returncode == 0, result.stderr
    assert sorted(json_lines(result.stdout)) == sorted(s.value for s in recent)

    # an ISO-8601 time between the two: the same; one before both: everything
    between = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((now_ms - 3_600_000) / 1000))
    result = await tail(
        *_read(kafka, events_topic, "--json", "--since", between, "--idle-exit", "2")
    )
    assert sorted(json_lines(result.stdout)) == sorted(s.value for s in recent)
    result = await tail(*_read(kafka, events_topic, "--json", "--since", "3h", "--idle-exit", "2"))
    assert sorted(json_lines(result.stdout)) == sorted(s.value for s in old + recent)


def _wait_for_start(process: subprocess.Popen[str], timeout: float = 20) -> str:
    """The line tail writes on stderr once its partitions are assigned."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if "Ctrl-C stops" in line or not line:
            break
    assert "Ctrl-C stops" in line, f"no start line: {line!r}"
    return line


@contextmanager
def running_tail(*args: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        tail_argv(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    with process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


async def test_by_default_only_records_written_from_now_on(
    kafka: KafkaService, events_topic: str
) -> None:
    envelopes = story()
    # one record per produce: tansu's end offset is its last batch's first offset + 1
    for envelope in envelopes[:6]:
        await publish(kafka, events_topic, [envelope])
    with running_tail(*_read(kafka, events_topic, "--json", "--idle-exit", "3")) as process:
        await asyncio.to_thread(_wait_for_start, process)
        new = await publish(kafka, events_topic, envelopes[6:])
        stdout, stderr = await asyncio.to_thread(process.communicate, timeout=30)
    assert process.returncode == 0, stderr
    assert sorted(json_lines(stdout)) == sorted(s.value for s in new)


async def test_max_stops_after_that_many_records(
    kafka: KafkaService, events_topic: str, stored: list[Sent]
) -> None:
    result = await tail(*_read(kafka, events_topic, "--json", "--from-beginning", "--max", "4"))
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    assert len(lines) == 4
    assert set(lines) <= {s.value for s in stored}


# -- what people see --------------------------------------------------------------------------


async def test_human_lines_show_time_task_type_status_change_and_summary(
    kafka: KafkaService, events_topic: str, stored: list[Sent]
) -> None:
    result = await tail(*_read(kafka, events_topic, "--from-beginning", "--idle-exit", "2"))
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    # not a terminal: no colour
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert len(lines) == len(stored), result.stdout
    a, b, c = TASK_A[:8], TASK_B[:8], TASK_C[:8]
    expected = [
        rf"03:00:01\.250  {a}  task_created +pending  agent agent-1",
        rf"03:00:01\.350  {a}  task_updated +pending -> executing",
        rf"03:00:01\.450  {a}  chunk +\"The order ships \"",
        rf'03:00:01\.650  {a}  tool_call_request +crm_lookup {{"query":"open tickets","limit":5}}',
        rf'03:00:01\.750  {a}  tool_call_result +crm_lookup ok {{"rows":3}}',
        rf"03:00:01\.850  {a}  task_finished +executing -> completed  result \"Done: 3 rows\.\"",
        rf"03:00:01\.550  {b}  task_finished +executing -> failed  result \"no\"",
        rf"03:00:01\.350  {c}  task_finished +pending -> stopped",
    ]
    for pattern in expected:
        assert any(re.fullmatch(pattern, line) for line in lines), (pattern, result.stdout)


async def test_colour_only_when_asked_or_on_a_terminal(
    kafka: KafkaService, events_topic: str, stored: list[Sent]
) -> None:
    flags = ("--from-beginning", "--idle-exit", "2", "--type", "task_finished")
    coloured = await tail(*_read(kafka, events_topic, *flags, "--color", "always"))
    assert coloured.returncode == 0, coloured.stderr
    assert "\x1b[" in coloured.stdout
    plain = await tail(*_read(kafka, events_topic, *flags))
    assert plain.stdout and "\x1b" not in plain.stdout
    # the same lines, only painted
    stripped = re.sub(r"\x1b\[[0-9;]*m", "", coloured.stdout)
    assert sorted(stripped.splitlines()) == sorted(plain.stdout.splitlines())


async def test_text_shows_chunks_as_running_text(
    kafka: KafkaService, events_topic: str, stored: list[Sent]
) -> None:
    result = await tail(
        *_read(kafka, events_topic, "--text", "--from-beginning", "--idle-exit", "2"),
        "--task",
        TASK_A,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    a = TASK_A[:8]
    assert f"03:00:01.450  {a}  The order ships from the north warehouse." in lines, lines
    assert not any(" chunk " in line for line in lines)
    # the other events of the task are lines as usual, in order
    assert [line.split()[2] for line in lines] == [
        "task_created",
        "task_updated",
        "The",
        "tool_call_request",
        "tool_call_result",
        "task_finished",
    ]


async def test_dead_letters_show_their_reason_and_topic_names_come_from_the_config(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    topic = new_topic("dlq")
    await create_topics(kafka.bootstrap_servers, topic)
    headers = [
        ("dlq.reason", b"invalid_json"),
        ("dlq.error", b"Expecting property name"),
        ("dlq.source", b"sse"),
        ("dlq.task_id", TASK_A.encode()),
    ]
    await produce(
        kafka.bootstrap_servers, topic, [OutRecord(b"{not json", TASK_A.encode(), headers)]
    )
    # Kafka settings and topic names from the environment, exactly as `run` reads them
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "XPANDER_BRIDGE_TOPICS__DLQ": topic}
    result = await tail("--topic", "dlq", "--from-beginning", "--idle-exit", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert f" {topic} on {kafka.bootstrap_servers}" in result.stderr
    (line,) = result.stdout.splitlines()
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d\.\d{{3}}  {TASK_A[:8]}  dlq invalid_json +"
        r"Expecting property name  9 bytes: \{not json",
        line,
    ), line


# -- hostile input ------------------------------------------------------------------------------


def hostile_values() -> list[bytes | None]:
    huge_int = _envelope(TASK_C, "agent-1", "context_status", 3, {"estimated_tokens": 1})
    huge_int_value = orjson.dumps(huge_int).replace(
        b'"estimated_tokens":1', b'"estimated_tokens":' + str(2**70).encode()
    )
    return [
        b"not json \x1b[2J\x1b]0;owned\x07 at all",
        b'{"hello": "world"}',
        b"\xff\xfe\x00 not utf-8 \x9b31m",
        b"[" * 5000 + b"]" * 5000,
        b'{"schema_version": "1.0", "task_id": 42, "type": []}',
        b"x" * 300_000,
        orjson.dumps(_envelope(TASK_C, "agent-1", "chunk", 4, "\x1b[31mred\u202eevil\x07")),
        huge_int_value,
        None,
    ]


async def test_records_that_are_not_envelopes_are_shown_raw(
    kafka: KafkaService, events_topic: str
) -> None:
    values = hostile_values()
    records = [OutRecord(value, key=b"hostile-key") for value in values]
    await produce(kafka.bootstrap_servers, events_topic, records)
    (after,) = await publish(kafka, events_topic, story()[:1])

    result = await tail(*_read(kafka, events_topic, "--from-beginning", "--idle-exit", "2"))
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    lines = result.stdout.splitlines()
    assert len(lines) == len(values) + 1, result.stdout
    for forbidden in ("\x1b", "\x07", "\u202e", "\x9b"):
        assert forbidden not in result.stdout, forbidden
    assert all(len(line) < 300 for line in lines)
    shown_raw = r"\(not JSON\) +not json \\x1b\[2J\\x1b\]0;owned\\x07 at all"
    assert any(re.search(shown_raw, line) for line in lines), result.stdout
    assert any(re.search(r'\(not an envelope\) +\{"hello": "world"\}$', line) for line in lines)
    assert any("(tombstone)" in line for line in lines)
    assert any("1180591620717411303424" in line for line in lines)  # past 64 bits, as carried
    assert any(f"{TASK_A[:8]}  task_created" in line for line in lines)  # and it went on

    as_json = await tail(
        *_read(kafka, events_topic, "--json", "--from-beginning", "--idle-exit", "2")
    )
    assert as_json.returncode == 0, as_json.stderr
    no_traceback(as_json)
    json_values = [v for v in values if v is not None and _is_json(v)]
    assert sorted(json_lines(as_json.stdout)) == sorted([*json_values, after.value])
    assert as_json.stderr.count("is not JSON") == 4
    assert as_json.stderr.count("tombstone") == 1


def _is_json(value: bytes) -> bool:
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


# -- stopping and failing ----------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_signal_stops_it_cleanly(
    kafka: KafkaService, events_topic: str, stored: list[Sent], signum: int
) -> None:
    with running_tail(*_read(kafka, events_topic, "--from-beginning")) as process:
        await asyncio.to_thread(_wait_for_start, process)
        await asyncio.sleep(1.0)
        assert process.poll() is None, "it follows until stopped"
        sent = time.monotonic()
        process.send_signal(signum)
        stdout, stderr = await asyncio.to_thread(process.communicate, timeout=10)
        took = time.monotonic() - sent
    assert process.returncode == 0, stderr
    assert took < 3, took
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert len(stdout.splitlines()) == len(stored)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_broker_is_one_line_and_exit_1() -> None:
    broker = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = await tail("--bootstrap", broker, "--timeout", "2")
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"xpander-bridge tail: cannot reach Kafka at {broker} within 2s: ")
    assert "Connection refused" in line
    assert result.stdout == ""
    assert took < 15, took


async def test_a_missing_topic_is_one_line_and_exit_1(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    topic = new_topic("absent")
    result = await tail(*_read(kafka, topic))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f'xpander-bridge tail: topic "{topic}" does not exist on {kafka.bootstrap_servers}'
    ]
    assert result.stdout == ""


async def test_a_bad_setting_is_one_line_naming_it_and_exit_2() -> None:
    result = await tail(env={"XPANDER_BRIDGE_KAFKA__SECURITY_PROTOCOL": "TLS"})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "kafka.security_protocol" in line
    no_traceback(result)

    result = await tail("--since", "yesterday")
    assert result.returncode == 2
    assert "neither a duration" in result.stderr
    no_traceback(result)


# -- parsing ------------------------------------------------------------------------------------


def test_since_parses_durations_and_iso_times() -> None:
    now = 1_800_000_000_000
    assert parse_since("30s", now_ms=now) == now - 30_000
    assert parse_since("10m", now_ms=now) == now - 600_000
    assert parse_since("2h", now_ms=now) == now - 7_200_000
    assert parse_since("1.5d", now_ms=now) == now - 129_600_000
    assert parse_since("2026-11-26T03:00:01.250Z", now_ms=now) == BASE_TIME_MS
    assert parse_since("2026-11-26T04:00:01.250+01:00", now_ms=now) == BASE_TIME_MS
    for bad in ("", "10", "10 minutes", "-5m", "yesterday"):
        with pytest.raises(ValueError, match="neither a duration"):
            parse_since(bad, now_ms=now)
