"""kcat (librdkafka's command-line client) reads the events topic with
headers, and gets what our consumer got: the same records, keys, values and
headers."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.kafka import ConsumedRecord

from interop.helpers import Published, examples, kcat_args

pytestmark = pytest.mark.timeout(120)


def run_kcat(args: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{shlex.join(args)} exited {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def as_kcat_json(record: ConsumedRecord) -> dict[str, Any]:
    """A record as ``kcat -J`` prints it (header values and payloads as text)."""
    headers: list[str] = []
    for name, value in record.headers:
        headers += [name, value.decode()]
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "ts": record.timestamp,
        "key": None if record.key is None else record.key.decode(),
        "payload": record.required_value().decode(),
        "headers": headers,
    }


def test_kcat_reads_the_same_records_keys_values_and_headers(
    published: Published, kcat: Path
) -> None:
    protocol, start = kcat_args(published.kafka)
    topic = published.events_topic
    broker = published.kafka.bootstrap_servers
    proc = run_kcat(
        [str(kcat), "-b", broker, "-C", "-t", topic, "-o", start, "-e", "-J", "-q", *protocol]
    )
    read = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    keep = ("topic", "partition", "offset", "ts", "key", "payload", "headers")
    got = sorted(({k: r.get(k) for k in keep} for r in read), key=_position)
    expected = sorted((as_kcat_json(r) for r in published.events), key=_position)
    assert len(got) == len(expected)
    assert got == expected


def _position(record: dict[str, Any]) -> tuple[int, int]:
    return record["partition"], record["offset"]


def test_the_kcat_lines_of_the_docs(published: Published, kcat: Path) -> None:
    """docs/CONSUMING.md's kcat line for this broker (on tansu, the one with the
    settings the page gives for it), with this broker and topic: every record,
    with key and headers."""
    tansu = published.kafka.broker == "tansu"
    example = examples()["kcat-tansu" if tansu else "kcat"]
    args = shlex.split(example.code.replace("\\\n", " "))
    assert args[0] == "kcat"
    protocol, start = kcat_args(published.kafka)
    assert " ".join(protocol) in " ".join(args), "the page and kcat_args() must agree"
    assert args[args.index("-o") + 1] == start
    args[0] = str(kcat)
    args[args.index("-b") + 1] = published.kafka.bootstrap_servers
    args[args.index("-t") + 1] = published.events_topic
    lines = run_kcat(args).stdout.splitlines()
    assert len([line for line in lines if line.startswith("key=")]) == len(published.events)
    by_place = {(r.partition, r.offset): r for r in published.events}
    for header_line, value_line in zip(lines[0::2], lines[1::2], strict=True):
        fields = dict(part.split("=", 1) for part in header_line.split(" ", 3))
        record = by_place[int(fields["partition"]), int(fields["offset"])]
        assert fields["key"] == (record.key or b"").decode()
        ce_id = (record.header("ce_id") or b"").decode()
        assert f"ce_id={ce_id}" in fields["headers"].split(",")
        assert value_line == record.required_value().decode()
