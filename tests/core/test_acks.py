"""Ordered acks: a position moves only over an unbroken run."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.core.acks import OrderedAcks


def test_out_of_order_acks_wait_for_the_gap() -> None:
    acks = OrderedAcks(start=1)
    for position in range(1, 6):
        acks.track(position)
    assert acks.ack(2) == 0
    assert acks.ack(3) == 0
    assert acks.pending == 5
    assert acks.ack(1) == 3
    assert acks.ack(5) == 3
    assert acks.ack(4) == 5
    assert acks.pending == 0


def test_duplicate_and_unknown_acks_change_nothing() -> None:
    acks = OrderedAcks(start=10)
    acks.track(10)
    assert acks.ack(10) == 10
    assert acks.ack(10) == 10
    assert acks.ack(99) == 10


def test_skipped_positions_count_as_done() -> None:
    # Compacted topics and transaction markers leave offset gaps.
    acks = OrderedAcks(start=0)
    acks.track(0)
    acks.track(5)
    acks.ack(0)
    assert acks.done == 4
    acks.ack(5)
    assert acks.done == 5


@given(st.permutations(list(range(1, 40))))
def test_done_is_the_longest_acked_prefix(order: list[int]) -> None:
    acks = OrderedAcks(start=1)
    for position in range(1, 40):
        acks.track(position)
    acked: set[int] = set()
    for position in order:
        acks.ack(position)
        acked.add(position)
        prefix = 0
        while prefix + 1 in acked:
            prefix += 1
        assert acks.done == prefix
