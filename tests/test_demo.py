"""`xpander-bridge demo`, as a user runs it: a subprocess that shows events
flowing, the agents' figures and the tasks paused for a human, tells how to
tail its broker, and stops cleanly."""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WATCH = "watch the events:"
START = "start a task:"
ROUND_TRIP = re.compile(
    r"^command round trip: create -> reply ok in (?P<reply>[\d.]+)s, "
    r"task (?P<task>[0-9a-f-]{36})'s first event \((?P<type>\w+)\) "
    r"on xpander\.task\.events in (?P<first>[\d.]+)s$",
    re.MULTILINE,
)
AGENTS = ("agent-emulator-1", "agent-emulator-2", "agent-emulator-3")
#: a row of the agents' table: tasks now, finished, p50, p95, tokens, tool errors/calls, oldest
AGENT_ROW = re.compile(
    r"^  (?P<agent>agent-emulator-\d)\s+(?P<pending>\d+)\s+(?P<executing>\d+)\s+(?P<paused>\d+)"
    r"\s+(?P<ok>\d+)\s+(?P<failed>\d+)\s+(?P<error>\d+)\s+(?P<stopped>\d+)"
    r"\s+(?P<p50>\S+)\s+(?P<p95>\S+)\s+(?P<tokens>\d+)\s+(?P<tool_errors>\d+)/(?P<tool_calls>\d+)"
    r"\s+(?P<oldest>\S+)$",
    re.MULTILINE,
)
PAUSED_ROW = re.compile(r"^  (agent-emulator-\d)\s+(\S+)\s+paused (\d+(?:\.\d)?)s$", re.MULTILINE)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _demo(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge", "demo", "--http-port", "0", *args]


@pytest.mark.timeout(90)
def test_demo_shows_events_flowing_and_stops_clean() -> None:
    port = _free_port()
    result = subprocess.run(
        _demo("--duration", "6", "--kafka-port", str(port)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=80,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rates = [float(m) for m in re.findall(r"events/s\s+(\d+)", result.stdout)]
    assert rates and max(rates) > 0, result.stdout
    done = re.search(r"stopped in [\d.]+s, (\d+) envelopes published, 0 undelivered", result.stdout)
    assert done is not None, result.stdout
    assert int(done.group(1)) > 0
    # the header: the broker on the port asked for, and the command that tails it
    assert f"kafka 127.0.0.1:{port} " in result.stdout
    assert f"{WATCH}  {shlex.quote(sys.executable)} -m bridge tail " in result.stdout
    assert f" tail --bootstrap 127.0.0.1:{port} --text\n" in result.stdout
    # without a terminal, the whole summary once at the end: one row per agent
    rows = {m["agent"]: m for m in AGENT_ROW.finditer(result.stdout)}
    assert sorted(rows) == list(AGENTS), result.stdout
    assert "paused tasks (waiting for a human): " in result.stdout


@pytest.mark.timeout(120)
def test_the_summary_shows_each_agents_figures_and_the_paused_tasks() -> None:
    """Runs until the bridge follows a paused task (the demo scenario pauses
    some tasks for 20 s), then stops: the final summary has it."""
    demo = subprocess.Popen(
        _demo("--duration", "90", "--kafka-port", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    with demo:
        try:
            seen = _read_until(demo, re.compile(r"^events/s .* paused [1-9]\d*$"))
            if not ROUND_TRIP.search(seen):  # the demo's own command, through Kafka
                seen += _read_until(demo, re.compile(r"^command round trip: (create -> reply|FAI)"))
            demo.send_signal(signal.SIGINT)
            out, err = demo.communicate(timeout=60)
        finally:
            if demo.poll() is None:
                demo.kill()
    assert demo.returncode == 0, err[-2000:]
    trip = ROUND_TRIP.search(seen)
    assert trip is not None, seen
    assert trip["type"] == "task_created"
    assert float(trip["reply"]) <= float(trip["first"])
    summary = out[out.index("agents (") :]
    rows = {m["agent"]: m for m in AGENT_ROW.finditer(summary)}
    assert sorted(rows) == list(AGENTS), seen + out
    assert sum(int(r["paused"]) for r in rows.values()) >= 1, summary
    assert sum(int(r["executing"]) + int(r["pending"]) for r in rows.values()) >= 1, summary
    assert sum(int(r["tool_calls"]) for r in rows.values()) > 0, summary
    for row in rows.values():
        if int(row["paused"]):  # an agent with a paused task has its age
            assert re.fullmatch(r"\d+(\.\d)?[smh]", row["oldest"]), summary
        else:
            assert row["oldest"] == "-", summary
        assert int(row["tool_errors"]) <= int(row["tool_calls"])
    paused = re.search(r"^paused tasks \(waiting for a human\): (\d+)$", summary, re.MULTILINE)
    assert paused is not None, summary
    listed = PAUSED_ROW.findall(summary)
    assert 1 <= len(listed) <= int(paused.group(1)), summary
    assert int(paused.group(1)) == sum(int(r["paused"]) for r in rows.values())
    ages = [float(age) for _, _, age in listed]
    assert ages == sorted(ages, reverse=True)  # the longest waiting first
    for agent, _, _ in listed:
        assert int(rows[agent]["paused"]) >= 1


@pytest.mark.timeout(120)
def test_a_taken_port_falls_back_and_the_printed_command_tails_the_demo() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo = subprocess.Popen(
            _demo("--duration", "60", "--kafka-port", str(port)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        with demo:
            try:
                seen, command = _read_until_watch_line(demo)
                assert f"port {port} is taken" in seen, seen
                bootstrap = command[command.index("--bootstrap") + 1]
                assert bootstrap != f"127.0.0.1:{port}"
                start = demo.stdout.readline() if demo.stdout else ""
                assert start.startswith(START), start
                create = subprocess.run(  # the other command the header offers
                    shlex.split(start[len(START) :]),
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                    timeout=60,
                    check=False,
                )
                # what the user would paste, made to stop on its own
                tail = subprocess.run(
                    [*command, "--max", "15", "--idle-exit", "20"],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                    timeout=60,
                    check=False,
                )
                demo.send_signal(signal.SIGINT)
                out, err = demo.communicate(timeout=60)
            finally:
                if demo.poll() is None:
                    demo.kill()
    assert create.returncode == 0, create.stderr
    reply = json.loads(create.stdout)
    assert (reply["command"], reply["outcome"]) == ("create", "ok"), reply
    assert f"--bootstrap {bootstrap} " in start
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert len(lines) >= 5, tail.stdout
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3}  [0-9a-f-]{8}  ", line) for line in lines), lines
    assert demo.returncode == 0, err[-2000:]
    assert "0 undelivered" in out


def _read_until(demo: subprocess.Popen[str], line_pattern: re.Pattern[str]) -> str:
    """The demo's output up to the first line matching ``line_pattern``."""
    assert demo.stdout is not None
    seen = ""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = demo.stdout.readline()
        if not line:
            break
        seen += line
        if line_pattern.match(line.rstrip("\n")):
            return seen
    raise AssertionError(f"no line matching {line_pattern.pattern!r} in: {seen}")


def _read_until_watch_line(demo: subprocess.Popen[str]) -> tuple[str, list[str]]:
    """The demo's output up to its tail command, and that command as argv."""
    assert demo.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = demo.stdout.readline()
        if not line:
            break
        seen += line
        if line.startswith(WATCH):
            return seen, shlex.split(line[len(WATCH) :])
    raise AssertionError(f"no {WATCH!r} line in: {seen}")


def test_the_demo_port_is_fixed_unless_the_environment_says_otherwise() -> None:
    from bridge.demo import DEMO_KAFKA_PORT, KAFKA_PORT_ENV, demo_kafka_port
    from bridge.errors import ConfigError

    assert demo_kafka_port({}) == DEMO_KAFKA_PORT == 19092
    assert demo_kafka_port({KAFKA_PORT_ENV: "29092"}) == 29092
    assert demo_kafka_port({KAFKA_PORT_ENV: "0"}) == 0
    for bad in ("x", "-1", "70000"):
        with pytest.raises(ConfigError, match=KAFKA_PORT_ENV):
            demo_kafka_port({KAFKA_PORT_ENV: bad})


def test_quantiles_interpolate_within_the_bucket_as_prometheus_does() -> None:
    from bridge.demo import histogram_quantile

    inf = float("inf")
    # 10 observations: 4 up to 1 s, 4 more up to 5 s, 2 more up to 15 s
    buckets = {1.0: 4.0, 5.0: 8.0, 15.0: 10.0, inf: 10.0}
    assert histogram_quantile(0.5, buckets) == 1.0 + 4.0 * (5 - 4) / 4
    assert histogram_quantile(0.95, buckets) == 5.0 + 10.0 * (9.5 - 8) / 2
    assert histogram_quantile(0.2, buckets) == 0.5  # the first bucket starts at 0
    assert histogram_quantile(0.99, {1.0: 1.0, inf: 3.0}) == 1.0  # in +Inf: its lower bound
    assert histogram_quantile(0.5, {1.0: 0.0, inf: 0.0}) is None
    assert histogram_quantile(0.5, {}) is None
