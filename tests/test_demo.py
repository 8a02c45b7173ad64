"""`xpander-bridge demo`, as a user runs it: a subprocess that shows events
flowing, tells how to tail its broker, and stops cleanly."""

from __future__ import annotations

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
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert len(lines) >= 5, tail.stdout
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3}  [0-9a-f-]{8}  ", line) for line in lines), lines
    assert demo.returncode == 0, err[-2000:]
    assert "0 undelivered" in out


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
