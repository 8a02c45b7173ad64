"""`xpander-bridge demo`, as a user runs it: a subprocess that shows events
flowing and stops cleanly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(90)
def test_demo_shows_events_flowing_and_stops_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--duration", "6", "--http-port", "0"],
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
