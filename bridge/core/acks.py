"""Ordered acknowledgements: a position moves only over an unbroken run of acks.

Used wherever "how far is safely done" matters: a Kafka consumer's committable
offset per partition (a message still in flight holds the offset back even if
later ones finished), and a task stream's acknowledged sequence (what a
checkpoint may record). Like Vector's ordered finalizer, but synchronous and
tiny because everything runs on one event loop.
"""

from __future__ import annotations

__all__ = ["OrderedAcks"]


class OrderedAcks:
    """Tracks positions ``start, start+1, ...`` handed out in order and acked in any order.

    ``done`` is the highest position such that it and every position before it
    were acked; ``start - 1`` before the first ack.
    """

    __slots__ = ("_acked", "_done", "_next")

    def __init__(self, start: int = 0) -> None:
        self._next = start
        self._done = start - 1
        self._acked: set[int] = set()

    @property
    def done(self) -> int:
        return self._done

    @property
    def pending(self) -> int:
        """Positions handed out but not yet covered by ``done``."""
        return self._next - 1 - self._done

    @property
    def next_position(self) -> int:
        return self._next

    def track(self, position: int) -> None:
        """Register a position; positions must be tracked in increasing order."""
        if position < self._next:
            raise ValueError(f"position {position} tracked out of order (next {self._next})")
        # A gap (e.g. skipped offsets of a compacted topic) counts as acked.
        for skipped in range(self._next, position):
            self._acked.add(skipped)
        self._next = position + 1
        self._advance()

    def ack(self, position: int) -> int:
        """Mark one position done; returns the new ``done``."""
        if position <= self._done or position >= self._next:
            return self._done  # a late duplicate or an unknown position changes nothing
        self._acked.add(position)
        self._advance()
        return self._done

    def _advance(self) -> None:
        acked = self._acked
        done = self._done
        while done + 1 in acked:
            done += 1
            acked.discard(done)
        self._done = done
