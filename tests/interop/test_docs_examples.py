"""The Python consumers of docs/CONSUMING.md, run as written against the
broker the bridge wrote to (configured by the environment variables the page
documents): the page cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from support.kafka import KafkaService

from bridge.envelope import ActivityAssembler, Envelope, read_activity, read_envelope
from interop.helpers import CONSUMING, Example, Published, examples, python_blocks

pytestmark = pytest.mark.timeout(120)

PYTHON_EXAMPLES = sorted(name for name, e in examples().items() if e.language == "python")


def test_every_python_block_is_a_named_example_with_a_check() -> None:
    assert python_blocks() == len(PYTHON_EXAMPLES), (
        f"every python block of {CONSUMING.name} needs an <!-- example: name --> line before it"
    )
    assert set(PYTHON_EXAMPLES) == set(CHECKS), "each example needs a check here"


def run_example(example: Example, published: Published, tmp_path: Path) -> list[str]:
    script = tmp_path / f"{example.name}.py"
    script.write_text(example.code)
    kafka = published.kafka
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "XPANDER_EVENTS_TOPIC": published.events_topic,
        "XPANDER_STATE_TOPIC": published.state_topic,
        "XPANDER_ACTIVITY_TOPIC": published.activity_topic,
        "CONSUMER_GROUP": f"docs-{example.name}-{uuid.uuid4().hex[:8]}",
        "KAFKA_CONSUMER_CONFIG": json.dumps(consumer_config(example, kafka)),
        "MAX_RECORDS": str(
            len(published.activity if example.name == "activity-reader" else published.events)
        ),
    }
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            cwd=tmp_path,  # the bridge is imported as a user imports it: installed
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{example.name} did not finish: {exc.stdout!r} {exc.stderr!r}")
    if proc.returncode != 0:
        pytest.fail(f"{example.name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout.splitlines()


def consumer_config(example: Example, kafka: KafkaService) -> dict[str, int]:
    """A quick group join on the test broker (tansu waits half a session before
    the first assignment), in each client's own names."""
    if "aiokafka" in example.code:
        return dict(kafka.group_settings)
    return {key.replace("_", "."): value for key, value in kafka.group_settings.items()}


def envelopes(published: Published) -> list[Envelope]:
    return [read_envelope(r.required_value(), r.headers) for r in published.events]


def check_printed_events(lines: list[str], published: Published) -> None:
    expected = sorted(
        f"{e.task_id} {e.sequence} {e.type} {e.status or '-'}" for e in envelopes(published)
    )
    assert sorted(lines) == expected


def check_cloudevents(lines: list[str], published: Published) -> None:
    expected = sorted(
        f"ai {e.event_id} ai.xpander.task.{e.type} {e.task_id} {e.occurred_at.isoformat()}"
        for e in envelopes(published)
    )
    assert sorted(f"ai {line}" for line in lines) == expected


def check_state_table(lines: list[str], published: Published) -> None:
    table = {line.split()[0]: line.split()[1:] for line in lines}
    assert {task: row[0] for task, row in table.items()} == published.statuses
    assert {row[1] for row in table.values()} == {"task_finished"}
    last: dict[str, Envelope] = {}
    for record in published.state:  # per partition in offset order: the last one wins
        envelope = read_envelope(record.required_value(), record.headers)
        last[envelope.task_id] = envelope
    assert {task: int(row[2]) for task, row in table.items()} == {
        task: e.sequence for task, e in last.items()
    }


def check_activity_threads(lines: list[str], published: Published) -> None:
    assembler = ActivityAssembler()
    threads = {}
    for record in published.activity:
        thread = assembler.add(read_activity(record.required_value(), record.headers))
        if thread is not None:
            threads[(record.key or b"").decode()] = len(thread["messages"])
    assert set(threads) == set(published.statuses), "a thread for every ended task"
    assert min(threads.values()) > 0
    assert sorted(lines) == sorted(f"{task} {count}" for task, count in threads.items())


CHECKS: dict[str, Callable[[list[str], Published], None]] = {
    "aiokafka-consumer": check_printed_events,
    "confluent-consumer": check_printed_events,
    "cloudevents-consumer": check_cloudevents,
    "state-table": check_state_table,
    "activity-reader": check_activity_threads,
}


@pytest.mark.parametrize("name", PYTHON_EXAMPLES)
def test_python_example_runs_as_written(name: str, published: Published, tmp_path: Path) -> None:
    lines = run_example(examples()[name], published, tmp_path)
    assert not [line for line in lines if line.startswith(("skipped", "consumer error"))], lines
    CHECKS[name](lines, published)
