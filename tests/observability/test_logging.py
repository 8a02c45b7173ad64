"""Logs: the JSON and text formats, secrets masked, and a real run at DEBUG
that never prints the API key or the SASL password."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import secrets
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.e2e import bridge_config, config_env, run_bridge
from support.kafka import KafkaService
from support.waiting import eventually

from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, ScenarioSettings, TaskProfile
from bridge.observability.logging import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    register_secret,
)

pytestmark = pytest.mark.timeout(10)

MASK = "**********"


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr does in a shell."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging() changes the root logger; give the next test it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {
        name: logging.getLogger(name).level
        for name in ("bridge.kafka.librdkafka", "httpx", "httpcore")
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, noisy_level in noisy.items():
        logging.getLogger(name).setLevel(noisy_level)


def unique_secret(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    parsed = [orjson.loads(line) for line in lines]
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


# --- formats -------------------------------------------------------------------


def test_json_is_one_object_per_line_with_the_extra_fields() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", out)
    log = logging.getLogger("bridge.test.json")
    log.info(
        "task %s followed",
        "t-1",
        extra={
            "task_id": "t-1",
            "count": 3,
            "ratio": 0.5,
            "ok": True,
            "none": None,
            "path": Path("/x"),
        },
    )
    log.warning("two\nlines in one message")
    log.debug("below the level")
    first, second = json_lines(out.getvalue())
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["time"])
    assert first["level"] == "info"
    assert first["logger"] == "bridge.test.json"
    assert first["message"] == "task t-1 followed"
    assert first["task_id"] == "t-1"
    assert first["count"] == 3
    assert first["ratio"] == 0.5
    assert first["ok"] is True
    assert first["none"] is None
    assert first["path"] == "/x"  # anything else is written as its str()
    assert second["level"] == "warning"
    assert second["message"] == "two\nlines in one message"


def test_json_carries_the_exception_as_one_field() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", out)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("bridge.test").exception("it failed", extra={"task": "delivery"})
    (entry,) = json_lines(out.getvalue())
    assert entry["level"] == "error"
    assert entry["task"] == "delivery"
    assert "Traceback" in entry["exception"]
    assert "ValueError: boom" in entry["exception"]


def test_text_is_for_a_person_at_a_terminal() -> None:
    out = Terminal()
    configure_logging("INFO", "auto", out)  # auto: a terminal gets text
    logging.getLogger("bridge.app").info("bridge started", extra={"agents": 2, "topic": "t"})
    line = out.getvalue().rstrip("\n")
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d INFO    bridge\.app: bridge started  agents=2 topic=t", line
    )
    assert not line.startswith("{")


def test_auto_writes_json_when_not_a_terminal() -> None:
    out = io.StringIO()
    configure_logging("INFO", "auto", out)
    logging.getLogger("bridge").info("piped")
    (entry,) = json_lines(out.getvalue())
    assert entry["message"] == "piped"


def test_library_chatter_is_held_to_warnings_even_at_debug() -> None:
    out = io.StringIO()
    configure_logging("DEBUG", "json", out)
    logging.getLogger("bridge.kafka.librdkafka").info("FAIL Disconnected (after 0ms)")
    logging.getLogger("httpx").info("HTTP Request: GET ...")
    logging.getLogger("bridge.sources").debug("ours at debug")
    assert [e["message"] for e in json_lines(out.getvalue())] == ["ours at debug"]


# --- secrets ----------------------------------------------------------------------


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_a_registered_secret_never_appears(formatter: logging.Formatter) -> None:
    secret = unique_secret("api-key")
    register_secret(secret)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    log = logging.getLogger(f"bridge.test.secret.{id(formatter)}")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    try:
        log.info("key is %s", secret, extra={"header": f"x-api-key: {secret}", "obj": [secret]})
        log.debug(f"inline {secret} in the message")
        try:
            raise RuntimeError(f"request failed with key={secret}")
        except RuntimeError:
            log.exception("call failed", extra={"error": f"HTTP 401 for {secret}"})
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert secret not in text
    assert text.count(MASK) >= 6  # message, two fields, inline, exception, error field
    assert "RuntimeError: request failed with key=" + MASK in text


def test_short_values_are_not_masked_they_would_mask_words() -> None:
    register_secret("abc")
    register_secret(None)
    register_secret("")
    out = io.StringIO()
    configure_logging("INFO", "json", out)
    logging.getLogger("bridge").info("abc is a word")
    (entry,) = json_lines(out.getvalue())
    assert entry["message"] == "abc is a word"


# --- a real run ---------------------------------------------------------------------


def subprocess_env(
    emu: Emulator, kafka: KafkaService, topic: Callable[[str], str]
) -> dict[str, str]:
    # logging.format stays `auto`: stderr is a pipe, so it must choose JSON by itself.
    return config_env(bridge_config(emu, kafka, topic, logging={"level": "DEBUG"}))


async def metric_sum(client: httpx.AsyncClient, url: str, sample: str) -> float:
    text = (await client.get(url)).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample
    )


@pytest.mark.timeout(60)
async def test_a_real_run_at_debug_never_logs_a_secret(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    api_key = unique_secret("xpk-live")
    # SASL stays off; the password is only configured, which is enough to leak.
    sasl_password = unique_secret("sasl-pw")
    settings = EmulatorSettings(
        api_key=api_key,
        scenario=ScenarioSettings(
            task_count=6,
            arrival_interval_s=0.02,
            streaming_share=0.7,
            profile=TaskProfile(events_per_task=12, event_interval_s=0.005, sub_task_share=0),
        ),
        seed=11,
    )
    async with Emulator(settings) as emu:
        env = subprocess_env(emu, kafka, new_topic)
        env["XPANDER_BRIDGE_KAFKA__SASL_PASSWORD"] = sasl_password
        process = await run_bridge(env)
        assert process.stderr is not None and process.stdout is not None
        stderr_lines: list[bytes] = []

        async def read_stderr() -> None:
            assert process.stderr is not None
            async for line in process.stderr:
                stderr_lines.append(line)

        reader = asyncio.create_task(read_stderr())
        scraped: list[str] = []
        try:
            port = await started_on_port(stderr_lines)
            metrics_url = f"http://127.0.0.1:{port}/metrics"
            async with httpx.AsyncClient() as client:
                ready = f"http://127.0.0.1:{port}/readyz"

                async def is_ready() -> bool:
                    return (await client.get(ready)).status_code == 200

                await eventually(is_ready, timeout_s=20, what="the bridge to be ready")
                emu.start_scenario(emu.settings.scenario)

                async def some_finished() -> bool:
                    done = await metric_sum(
                        client, metrics_url, "xpander_bridge_tasks_finished_total"
                    )
                    return done >= 3

                await eventually(
                    some_finished, timeout_s=20, what="tasks to finish through the bridge"
                )
                # The key is revoked: every call now fails with 401, and the
                # bridge logs the refusals (with the platform's answer).
                emu.set_api_key(unique_secret("rotated"))

                async def platform_refused() -> bool:
                    body = (await client.get(ready)).json()
                    return body["conditions"].get("platform", {}).get("ok") is False

                await eventually(
                    platform_refused, timeout_s=15, what="the bridge to notice the revoked key"
                )
                scraped.append((await client.get(metrics_url)).text)
                scraped.append((await client.get(ready)).text)
            process.send_signal(signal.SIGTERM)
            stdout = await asyncio.wait_for(process.stdout.read(), 30)
            await asyncio.wait_for(process.wait(), 30)
            await asyncio.wait_for(reader, 5)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            reader.cancel()
    stderr = b"".join(stderr_lines)
    assert process.returncode == 0, stderr.decode()[-3000:]
    for secret in (api_key, sasl_password):
        assert secret.encode() not in stderr
        assert secret.encode() not in stdout
        assert all(secret not in text for text in scraped)
    # Stronger than the redaction: no log call even tried to print a secret.
    assert MASK.encode() not in stderr, "a secret reached a log call (masked, but still a bug)"
    entries = [orjson.loads(line) for line in stderr.splitlines() if line.strip()]
    assert all(
        isinstance(e, dict) and {"time", "level", "logger", "message"} <= e.keys() for e in entries
    )
    messages = [e["message"] for e in entries]
    assert "bridge started" in messages
    started = next(e for e in entries if e["message"] == "bridge started")
    assert started["event_loop"] == "uvloop", "the daemon runs on pipeline.event_loop's default"
    assert "bridge stopped" in messages
    refusals = [e for e in entries if e["level"] in ("warning", "error")]
    assert refusals, "the revoked key must be logged"
    assert any(e.get("status") == 401 or "401" in str(e.get("error")) for e in refusals), refusals


async def started_on_port(lines: list[bytes]) -> int:
    """The HTTP port, from the "bridge started" log line (the bridge asked for port 0)."""
    port: list[int] = []

    def started() -> bool:
        for line in lines:
            if b'"bridge started"' in line:
                port.append(int(orjson.loads(line)["http_port"]))
                return True
        return False

    await eventually(started, timeout_s=20, what="the bridge to start")
    return port[0]
