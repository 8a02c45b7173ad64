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


@given(st.permutations(list(range(1, 20))), st.integers(0, 19), st.integers(0, 18))
def test_acks_taken_back_newest_first_leave_the_done_of_those_before(
    order: list[int], kept: int, tracked_at: int
) -> None:
    # A transaction marks its records written before their reports; if one is
    # refused for good, the marks it made are taken back, newest first
    # (bridge.core.record.WriteJournal), while the stream tracks new positions.
    acks = OrderedAcks(start=1)
    for position in range(1, 20):
        acks.track(position)
    undo = []
    for index, position in enumerate(order):
        if index == tracked_at:
            acks.track(25)  # a gap: 20-24 count as done once reached
        before = acks.done
        acks.ack(position)
        if index >= kept:
            undo.append((position, before))
    for position, before in reversed(undo):
        acks.unack(position, before)
    expected = OrderedAcks(start=1)
    for position in range(1, 20):
        expected.track(position)
    expected.track(25)
    for position in order[:kept]:
        expected.ack(position)
    assert acks.done == expected.done
    # the positions left acked still move it once its gaps close
    for position in [*order[kept:], 25]:
        assert acks.ack(position) == expected.ack(position)


def test_taking_back_a_duplicate_ack_changes_nothing() -> None:
    acks = OrderedAcks(start=1)
    for position in (1, 2, 3):
        acks.track(position)
    acks.ack(1)
    acks.ack(2)
    before = acks.done
    acks.ack(2)  # a late duplicate
    acks.unack(2, before)
    assert acks.done == 2
