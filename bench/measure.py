"""RSS and CPU of a process tree, read from /proc (Linux only).

The tree is the root process and every descendant alive at the sample. RSS is
summed over the tree (``VmRSS``: shared pages count once per process, which is
what a container limit would charge). CPU is user + system time of each process
plus that of its children already reaped, so a child that exits between two
samples is not lost once its parent has waited for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TreeSample", "TreeSampler", "descendants", "sample_tree"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class TreeSample:
    rss_bytes: int
    cpu_s: float
    processes: int


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(c) for c in task.read_text().split())
        except OSError:
            continue
    return found


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root``, parents before children."""
    found: list[int] = []
    pending = _children(root)
    while pending:
        pid = pending.pop(0)
        found.append(pid)
        pending.extend(_children(pid))
    return found


def _one(pid: int) -> tuple[int, float] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields start after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    rss = int(statm.split()[1]) * _PAGE
    return rss, (utime + stime + cutime + cstime) / _TICKS


def sample_tree(root: int) -> TreeSample | None:
    """One sample of ``root`` and its descendants; None once ``root`` is gone."""
    first = _one(root)
    if first is None:
        return None
    rss, cpu = first
    count = 1
    pending = _children(root)
    while pending:
        pid = pending.pop()
        got = _one(pid)
        if got is None:
            continue
        rss += got[0]
        cpu += got[1]
        count += 1
        pending.extend(_children(pid))
    return TreeSample(rss, cpu, count)


class TreeSampler:
    """Samples a process tree every ``interval_s`` until stopped; keeps the peak RSS
    and the last CPU reading."""

    def __init__(self, root: int, interval_s: float = 0.2) -> None:
        self.root = root
        self.interval_s = interval_s
        self.peak_rss = 0
        self.cpu_s = 0.0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        got = sample_tree(self.root)
        if got is None:
            return
        self.samples += 1
        self.peak_rss = max(self.peak_rss, got.rss_bytes)
        self.cpu_s = max(self.cpu_s, got.cpu_s)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sample()
