"""Tasks the bridge created stream at once (``bridge.app.follow_hints``): the
note in the coordination topic reaches the partition's owner, who follows the
task long before a listing would show it; without coordination the creating
replica follows it itself. Discovery lists once a minute here, so only the
note can explain a task streaming within seconds."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest
from support.e2e import bridge_config, consume_until, discovery_ready
from support.kafka import ConsumedRecord, KafkaService, consume
from support.waiting import eventually

from bridge.app import Bridge
from bridge.app.follow_hints import MAX_AGE_S, FollowHints
from bridge.config import CoordinationConfig
from bridge.core.hint import FollowHint
from bridge.core.message import InMessage
from bridge.core.record import OutRecord
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings
from bridge.observability.metrics import HintOutcome, Metrics

pytestmark = pytest.mark.timeout(90)

#: long enough that no listing comes between the first and the end of a test
SLOW_LISTINGS = {"interval_s": 60.0, "full_interval_s": 600.0}


def _finished(task_id: str) -> Callable[[list[ConsumedRecord]], bool]:
    def done(records: list[ConsumedRecord]) -> bool:
        return any(
            r.key == task_id.encode()
            and orjson.loads(r.value or b"{}").get("type") == "task_finished"
            for r in records
        )

    return done


@pytest.mark.parametrize("coordinated", [True, False], ids=["coordination", "single"])
async def test_a_created_task_streams_before_any_listing_shows_it(
    kafka: KafkaService, new_topic: Callable[[str], str], coordinated: bool
) -> None:
    async with Emulator(EmulatorSettings()) as emu:
        config = bridge_config(
            emu,
            kafka,
            new_topic,
            discovery=SLOW_LISTINGS,
            coordination={"enabled": coordinated},
        )
        async with Bridge(config) as bridge:
            await discovery_ready(bridge)
            if coordinated:
                await eventually(
                    lambda: bridge.ownership is not None and len(bridge.ownership.owned) == 6,
                    timeout_s=30,
                    what="every coordination partition owned",
                )
            # Unlisted: the relist after the assignment may run meanwhile, and
            # must not find it (CI saw that: the note then found it ALREADY).
            task = emu.control.create_task(events=8, unlisted=True)
            assert bridge.follow_hints is not None
            started = time.monotonic()
            await bridge._publish(bridge.follow_hints.records_for(task))
            await consume_until(kafka, config.topics.events, _finished(task["id"]), 30)
            took = time.monotonic() - started
            # FOLLOWED (not ALREADY): the note started the stream.
            followed = bridge.metrics.follow_hints(HintOutcome.FOLLOWED)._value.get()
            assert followed == 1
            print(f"created -> task_finished on Kafka: {took:.2f} s")
            if coordinated:
                # The owner deleted the note once it acted on it (compacted topic).
                notes = await consume(
                    kafka.bootstrap_servers,
                    [config.coordination.tasks_topic],
                    count=2,
                    max_wait=15,
                )
                assert [r.value is None for r in notes if r.key == task["id"].encode()] == [
                    False,
                    True,
                ]


async def test_notes_that_are_not_ours_or_too_old_are_counted_and_left_to_the_listings() -> None:
    metrics = Metrics()
    written: list[OutRecord] = []

    async def publish(records: list[OutRecord]) -> None:
        written.extend(records)

    class Tasks:
        seen: list[dict[str, object]] = []

        def hinted(self, item: dict[str, object]) -> bool:
            self.seen.append(item)
            return True

    tasks = Tasks()
    hints = FollowHints(CoordinationConfig(enabled=True), publish, metrics, tasks)

    def message(value: bytes | None) -> InMessage:
        return InMessage("xpander.bridge.tasks", 0, 0, b"t-1", value, [])

    stale = FollowHint("t-1", "a", None, "pending", True, time.time() - MAX_AGE_S - 1)
    fresh = FollowHint("t-1", "a", None, "pending", True, time.time())
    for value in (
        b"not json",
        b"[]",
        b'{"v": 1, "kind": "follow"}',
        b'{"v": 2, "kind": "follow", "task_id": "t", "written_at": 1}',
        b'{"v": 1, "kind": "follow", "task_id": "t", "written_at": 1' + b" " * 5000 + b"}",
        stale.encode(),
        fresh.encode(),
        None,  # a tombstone: nothing to do
    ):
        hints(message(value))
    await eventually(lambda: len(written) == 2, timeout_s=5, what="two notes deleted")
    assert metrics.follow_hints(HintOutcome.INVALID)._value.get() == 5
    assert metrics.follow_hints(HintOutcome.STALE)._value.get() == 1
    assert metrics.follow_hints(HintOutcome.FOLLOWED)._value.get() == 1
    assert [item["id"] for item in tasks.seen] == ["t-1"]
    assert all(r.value is None and r.key == b"t-1" for r in written)
