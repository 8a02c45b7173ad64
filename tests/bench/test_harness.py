"""The benchmark harness itself, on a tiny burst: it starts the emulator, the
broker and two contenders, and counts what reached Kafka. Counts only, never
speed: a benchmark figure is not a test assertion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from support.kafka import KafkaService

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(90)
def test_tiny_burst_counts_every_event(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--size",
            "tiny",
            "--scenarios",
            "burst",
            "--contenders",
            "bridge,lean",
            "--no-chart",
            "--out",
            str(out),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=80,
    )
    report = orjson.loads((out / "results.json").read_bytes())
    rows = {row["contender"]: row for row in report["results"]}
    assert set(rows) == {"bridge", "lean"}
    for row in rows.values():
        assert row["expected"] == 5 * 10
        assert row["emitted"] == row["expected"]
        assert row["delivered"] == row["expected"], row
        # One handshake per stream, counted apart; the bridge filters them by
        # default (streams.publish_connected), the lean ceiling forwards them.
        expected_handshakes = 0 if row["contender"] == "bridge" else 5
        assert row["connected_records"] >= expected_handshakes
        assert row["peak_rss_mb"] > 0 and row["cpu_s"] > 0
        assert row["ended_by"] == "all delivered"


@pytest.mark.timeout(90)
def test_a_named_cluster_and_the_pipelined_bridge_count_every_event(
    tmp_path: Path, kafka: KafkaService
) -> None:
    # What measuring kafka.transaction_pipeline on Apache Kafka needs: the
    # bench against a cluster it did not start, with the pipelined contender.
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "bench.run", "--size", "tiny", "--scenarios", "burst"]
    command += ["--contenders", "bridge-pipelined", "--no-chart", "--out", str(out)]
    command += ["--bootstrap-servers", kafka.bootstrap_servers]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=80)
    report = orjson.loads((out / "results.json").read_bytes())
    [row] = report["results"]
    assert row["contender"] == "bridge-pipelined"
    assert row["delivered"] == row["expected"] == 5 * 10, row
