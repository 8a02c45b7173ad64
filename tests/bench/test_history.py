"""The benchmark's ``history`` scenario: a seeded history, live tasks arriving
after the contender's first listing, listing bytes and rounds counted by the
emulator, creation-to-first-event per live task. Counts only, never speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.report import targets
from bench.run import SIZES, STARTUP_S, after_startup, listing_rounds

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


def test_the_cost_after_start_up_leaves_out_the_start_up_listings() -> None:
    start = 1_000.0
    timeline = [
        [start - 1, True, 50_000_000],  # the baseline
        [start + 5, True, 50_000_000],  # after the group join
        *([start + STARTUP_S + s, False, 1_000] for s in range(11)),  # one a second
        [start + STARTUP_S + 5.5, True, 30_000],
    ]
    got = after_startup(timeline, start)
    assert got["after_startup_s"] == 10.0
    assert got["after_startup_full_listings"] == 1
    assert got["after_startup_bytes_per_s"] == (11 * 1_000 + 30_000) // 10
    assert after_startup(timeline, None) == {}
    assert after_startup(timeline[:3], start) == {}  # no window after start-up


def test_the_live_scenario_is_the_history_scenario_without_history() -> None:
    for size in SIZES.values():
        assert size["live"] == {**size["history"], "history": 0}


def _row(scenario: str, cpu_s: float, steady_bytes: int, p99: float) -> dict[str, object]:
    return {
        "scenario": scenario,
        "contender": "bridge",
        "skipped": None,
        "cpu_s": cpu_s,
        "first_event_p50_ms": p99 / 2,
        "first_event_p99_ms": p99,
        "extra": {
            "listing": {"after_startup_bytes_per_s": steady_bytes},
            "first_event_after_startup": {"tasks": 600, "p50_ms": p99 / 2, "p99_ms": p99},
        },
    }


@pytest.mark.parametrize(
    ("history", "met"),
    [
        (_row("history", 19.0, 2 * 130_000, 1_500), [True, True]),
        (_row("history", 21.0, 130_000, 1_500), [False, True]),  # CPU 2.1x
        (_row("history", 19.0, 2 * 130_000 + 1, 2_100), [False, False]),
    ],
)
def test_history_targets_compare_with_the_same_live_tasks_without_history(
    history: dict[str, object], met: list[bool]
) -> None:
    live = _row("live", 10.0, 130_000, 1_000)
    verdicts = [t for t in targets([history, live]) if t["target"].startswith("history")]
    assert [v["met"] for v in verdicts] == met


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
