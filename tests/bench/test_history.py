"""The benchmark's ``history`` scenario: a seeded history, live tasks arriving
after the contender's first listing, listing bytes and rounds counted by the
emulator, creation-to-first-event per live task. Counts only, never speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.run import listing_rounds

REPO = Path(__file__).resolve().parents[2]


def test_listing_rounds_split_full_and_live_listings() -> None:
    requests = {
        "list_tasks": 8,
        "list_tasks status=pending": 20,
        "list_tasks status=executing": 20,
        "list_tasks status=paused": 20,
    }
    sizes = {
        "list_tasks": 800_000,
        "list_tasks status=pending": 2_000,
        "list_tasks status=executing": 1_000,
        "list_tasks status=paused": 40,
    }
    got = listing_rounds(requests, sizes, agents=4)
    assert got["full_rounds"] == 2 and got["live_rounds"] == 5
    assert got["bytes"] == 803_040
    assert got["bytes_per_full_round"] == 400_000
    assert got["bytes_per_live_round"] == 608
    assert got["bytes_per_round"] == round(803_040 / 7)
    # a contender that lists everything every round: no live rounds
    everything = listing_rounds({"list_tasks": 12}, {"list_tasks": 1_200}, agents=4)
    assert everything["live_rounds"] == 0 and everything["bytes_per_live_round"] is None
    assert everything["bytes_per_round"] == everything["bytes_per_full_round"] == 400


@pytest.mark.timeout(90)
def test_tiny_history_counts_live_tasks_and_listing_bytes(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--size",
            "tiny",
            "--scenarios",
            "history",
            "--contenders",
            "bridge",
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
    (row,) = report["results"]
    assert row["streams"] == 5
    assert row["expected"] == 5 * 5
    # only the live tasks' records count as delivered
    assert row["delivered"] == row["emitted"] == row["expected"], row
    assert row["ended_by"] == "all delivered"
    assert row["extra"]["first_event_tasks"] == "5 of 5"
    assert row["first_event_p50_ms"] > 0
    listing = row["extra"]["listing"]
    assert row["list_bytes"] == listing["bytes"] > 0
    # the first listing is full: 200 finished tasks of some 500 bytes each
    assert listing["full_rounds"] >= 1 and listing["bytes_per_full_round"] > 200 * 300
