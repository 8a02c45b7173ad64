"""`xpander-bridge report`: a valid message lands on the topic; a bad one is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from support.kafka import KafkaService, consume, create_topics

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(60)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("XPANDER", "KAFKA"))}
    return subprocess.run(
        [sys.executable, "-m", "bridge", "report", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=ROOT,
        timeout=50,
        check=False,
    )


async def test_report_writes_a_valid_message(
    kafka: KafkaService, new_topic: Callable[[str], str], tmp_path: Path
) -> None:
    topic = new_topic("reports")
    await create_topics(kafka.bootstrap_servers, topic)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "XPANDER_BRIDGE_REPORTS__REPORTS_TOPIC": topic,
    }
    result = run_cli(
        "--agent-id",
        "a-1",
        "--result",
        "done",
        "--tokens",
        "12,34",
        "--used-tool",
        "search",
        "--duration",
        "2.5",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert f"sent to {topic}" in result.stdout
    (record,) = await consume(kafka.bootstrap_servers, [topic], count=1)
    assert record.key == b"a-1"
    assert orjson.loads(record.value or b"") == {
        "agent_id": "a-1",
        "is_success": True,
        "duration": 2.5,
        "used_tools": ["search"],
        "result": "done",
        "tokens": {"completion_tokens": 12, "prompt_tokens": 34},
    }


def test_a_typo_is_refused_before_sending(tmp_path: Path) -> None:
    message = tmp_path / "m.json"
    message.write_text('{"agent_id": "a", "reslt": "x"}')
    # No broker is needed: validation happens first.
    result = run_cli("--file", str(message), env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 2
    assert "unknown field(s): reslt" in result.stderr
    assert "Traceback" not in result.stderr
