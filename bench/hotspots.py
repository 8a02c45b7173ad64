"""Where the time goes, from py-spy's collapsed stacks (``bench.run --profile``).

    .venv/bin/python -m bench.hotspots bench/results/<run>/steady-bridge.folded [top]

Prints the functions with the most samples on top of the stack (self time) and
the most samples anywhere in the stack (total time), as shares of all samples.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

__all__ = ["hotspots"]


def hotspots(path: Path, top: int = 25) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} samples", "", "self:"]
    lines += [f"{n / samples:6.1%}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "total:"]
    lines += [f"{n / samples:6.1%}  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(hotspots(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
