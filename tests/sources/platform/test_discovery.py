"""Discovery: the listings of the emulator turned into followed tasks, with the
first listing as the baseline, claims, back-off and wake-ups."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from support.platform_source import Rig, SetClaims, fast_settings, open_rig, wait_until

from bridge.config import DiscoveryConfig
from bridge.core.checkpoint import Checkpoint, now
from bridge.core.identity import event_id_for
from bridge.emulator.settings import HttpFaultRule, TaskProfile
from bridge.sources.platform.context import Claims
from bridge.sources.platform.discovery import LIVE_STATUSES, Discovery
from bridge.sources.platform.supervisor import TaskSupervisor
from bridge.wire import STATUSES, TERMINAL_STATUSES

pytestmark = pytest.mark.timeout(30)

AGENT = "agent-emulator-1"
#: a task that stays at its first status for a minute unless a test moves it
SLOW = TaskProfile(event_interval_s=60.0, interval_jitter=0.0, pause_share=0.0)
AT_ONCE = TaskProfile(event_interval_s=0.0, pause_share=0.0, sub_task_share=0.0)


def discovery_for(
    rig: Rig,
    supervisor: TaskSupervisor,
    *,
    interval_s: float = 60.0,
    claims: Claims | None = None,
    wake: asyncio.Event | None = None,
    **config: Any,
) -> Discovery:
    settings = DiscoveryConfig(
        **{
            "agent_ids": [AGENT],
            "interval_s": interval_s,
            "jitter": 0.0,
            # the test's own intervals, not the request budget's
            "max_listing_requests_per_s": 1_000_000,
            **config,
        }
    )
    return Discovery(rig.context, supervisor, settings, claims=claims, wake=wake)


@asynccontextmanager
async def running(discovery: Discovery, supervisor: TaskSupervisor) -> AsyncIterator[None]:
    """``discovery.run()`` in the background; stopped (with every worker) after."""
    loop = asyncio.create_task(discovery.run())
    try:
        yield
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await supervisor.stop()


def ended(task_id: str, rig: Rig) -> Callable[[], bool]:
    return lambda: "task_finished" in rig.published.types(task_id)


def slow_task(rig: Rig, *, stopped: bool = False, **fields: Any) -> str:
    task_id: str = rig.emulator.create_task(events=12, profile=SLOW, **fields)["id"]
    if stopped:
        rig.emulator.engine.stop(rig.run_of(task_id))
    return task_id


async def test_the_first_listing_is_the_baseline(rig: Rig) -> None:
    history = slow_task(rig, stopped=True)
    live = slow_task(rig)
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor)

    await discovery.reconcile()
    await wait_until(lambda: rig.run_of(live).subscribers == 1, "the running task's stream")
    await discovery.reconcile()

    assert discovery.rounds == 2
    assert supervisor.is_known(live) and not supervisor.is_known(history)
    assert rig.published.envelopes(history) == []  # history, not news
    assert rig.emulator.inbox.calls["get"] == 0  # not even looked at
    await supervisor.stop()


@pytest.mark.parametrize("keeps_history", [True, False], ids=["replays", "no-history"])
async def test_a_task_that_appears_already_terminal_gets_its_events_and_its_end(
    rig: Rig, keeps_history: bool
) -> None:
    # Its stream is read from the start: a replica that streamed it may have
    # died before its first checkpoint committed (then what it published is in
    # no committed transaction; seen as a three-replica kill test missing
    # events 2 onwards of two tasks). A server with nothing to send: the end
    # comes from the status, after the grace.
    rig.emulator.settings.stream.honour_last_event_id = keeps_history
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor)
    await discovery.reconcile()  # the baseline: nothing yet
    quick = slow_task(rig, stopped=True, outcome="completed")  # started and ended in between

    await discovery.reconcile()
    await wait_until(ended(quick, rig), "its end")
    await discovery.reconcile()
    await wait_until(lambda: supervisor.followed == 0, "the worker to end")

    published = rig.published.envelopes(quick)
    assert rig.run_of(quick).connections == 1
    if keeps_history:
        emitted = [e.id for e in rig.emulator.events(quick)]
        assert [e["sse_id"] for e in published] == emitted
        assert [e["source"] for e in published] == ["sse"] * len(emitted)
        assert [e["sequence"] for e in published] == list(range(1, len(emitted) + 1))
    else:
        assert [e["source"] for e in published] == ["resync"]
    end = published[-1]
    assert (end["type"], end["status"]) == ("task_finished", "stopped")


@pytest.mark.parametrize("hostile", ["", ".", ".."])
async def test_a_listed_task_whose_id_names_no_task_is_not_followed(rig: Rig, hostile: str) -> None:
    # Such an id fits in no URL (wire.path refuses it), and an envelope of it
    # would name no task (the reader refuses it): not followed at all.
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor)
    await discovery.reconcile()  # the baseline
    odd = slow_task(rig, stopped=True, outcome="completed")
    fine = slow_task(rig, stopped=True, outcome="completed")
    rig.run_of(odd).id = hostile
    await discovery.reconcile()
    await wait_until(ended(fine, rig), "the other task's end")
    assert {e["task_id"] for e in rig.published.envelopes()} == {fine}
    await supervisor.stop()


async def test_a_task_not_owned_is_not_followed(rig: Rig) -> None:
    mine = slow_task(rig)
    theirs = slow_task(rig)
    claims = SetClaims(owned={mine})
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, claims=claims)

    await discovery.reconcile()
    await wait_until(lambda: rig.run_of(mine).subscribers == 1, "my task's stream")
    await discovery.reconcile()

    assert sorted(set(claims.asked)) == sorted([mine, theirs])
    assert supervisor.is_known(mine) and not supervisor.is_known(theirs)
    assert rig.run_of(theirs).connections == 0
    assert rig.published.envelopes(theirs) == []
    await supervisor.stop()


async def test_a_task_seen_running_elsewhere_that_ends_once_owned_gets_its_end(rig: Rig) -> None:
    history = slow_task(rig, stopped=True)
    handed = slow_task(rig)
    claims = SetClaims(owned=set())
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, claims=claims)

    await discovery.reconcile()  # another replica streams `handed`
    rig.emulator.engine.stop(rig.run_of(handed))
    claims.owned = {handed, history}  # its partition comes here, without a checkpoint
    await discovery.reconcile()

    await wait_until(ended(handed, rig), "the handed-over task's end")
    await wait_until(lambda: supervisor.followed == 0, "the worker to end")
    # Read from the start: whatever the other replica published may be in no
    # committed transaction (it died before its first checkpoint).
    published = rig.published.envelopes(handed)
    assert [e["sse_id"] for e in published] == [e.id for e in rig.emulator.events(handed)]
    assert published[-1]["type"] == "task_finished"
    # A task that had ended before anyone listed it stays history.
    assert rig.published.envelopes(history) == []


async def test_checkpoints_decide_what_an_ended_task_still_needs(rig: Rig) -> None:
    rig.emulator.settings.stream.start_on_subscribe = False
    done = rig.emulator.create_task(events=12, outcome="completed", profile=AT_ONCE)["id"]
    halfway = rig.emulator.create_task(events=12, outcome="completed", profile=AT_ONCE)["id"]
    await rig.emulator.wait_finished(done)
    await rig.emulator.wait_finished(halfway)

    def checkpoint(task_id: str, sequence: int, finished: bool) -> Checkpoint:
        last = event_id_for(task_id, b"", str(sequence))
        return Checkpoint(
            task_id=task_id,
            agent_id=AGENT,
            organization_id=rig.emulator.organization_id,
            sequence=sequence,
            last_sse_id=str(sequence),
            last_event_id=last,
            last_stream_event_id=last,
            first_event_id=event_id_for(task_id, b"", "1"),
            status="completed" if finished else "executing",
            finished=finished,
            written_at=now(),
        )

    claims = SetClaims(
        checkpoints={done: checkpoint(done, 12, True), halfway: checkpoint(halfway, 5, False)}
    )
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, claims=claims)

    await discovery.reconcile()  # even in the first listing: the checkpoints say
    await wait_until(ended(halfway, rig), "the rest of the half-read task")
    await wait_until(lambda: supervisor.followed == 0, "the worker to end")

    # Finished and checkpointed: nothing more. Halfway: streamed from its checkpoint.
    assert rig.run_of(done).connections == 0 and rig.published.envelopes(done) == []
    assert rig.streamed(halfway) == rig.emitted(halfway)[5:]
    assert [e["sequence"] for e in rig.published.envelopes(halfway)] == list(range(6, 13))


async def test_tasks_are_found_through_user_ids_too(rig: Rig) -> None:
    other_agent = "agent-emulator-2"
    task_id = slow_task(rig, agent_id=other_agent)
    user = rig.run_of(task_id).user_id
    assert user is not None
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, agent_ids=[], user_ids=[user])

    await discovery.reconcile()

    assert supervisor.is_known(task_id)
    await wait_until(lambda: rig.run_of(task_id).subscribers == 1, "its stream")
    await supervisor.stop()


async def test_listing_errors_back_off_honouring_retry_after_and_recover(rig: Rig) -> None:
    rig.emulator.set_faults(
        http=[HttpFaultRule(endpoints=["list"], status=503, next_n=1, retry_after_s=1)]
    )
    live = slow_task(rig)
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, interval_s=0.01)
    loop = asyncio.get_running_loop()

    started = loop.time()
    async with running(discovery, supervisor):
        await wait_until(lambda: discovery.rounds >= 1, "a listing to succeed")
        # The failure was followed by at least the Retry-After the server asked
        # for (the interval alone is 10 ms). A lower bound, not a speed.
        assert loop.time() - started >= 0.95
        assert rig.emulator.inbox.answers["list 503"] == 1
        await wait_until(lambda: supervisor.is_known(live), "the task to be followed")
    errors = {"endpoint": "list_tasks", "status_class": "5xx"}
    assert rig.metric("xpander_bridge_platform_requests_total", **errors) == 1
    assert rig.health.reachable_count >= 1
    assert rig.health.refusals == []


async def test_a_refused_listing_marks_the_key_refused_until_it_works(rig: Rig) -> None:
    rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["list"], status=401, next_n=1)])
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, interval_s=0.01)

    async with running(discovery, supervisor):
        await wait_until(lambda: discovery.rounds >= 1, "a listing to succeed")

    assert [error.status for error in rig.health.refusals] == [401]
    assert rig.health.reachable_count >= 1


@pytest.mark.parametrize("how", ["event", "method"])
async def test_a_wake_lists_at_once(rig: Rig, how: str) -> None:
    wake = asyncio.Event()
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, interval_s=60.0, wake=wake)

    async with running(discovery, supervisor):
        await wait_until(lambda: discovery.rounds == 1, "the first listing")
        task_id = slow_task(rig)
        if how == "event":
            wake.set()
        else:
            discovery.wake()
        # The next listing is a minute away, unless the wake works.
        await wait_until(lambda: discovery.rounds == 2, "the listing the wake asked for")
        await wait_until(lambda: supervisor.is_known(task_id), "the new task to be followed")


class _WakingClaims(SetClaims):
    """Claims whose ownership changes while a listing is being processed: the
    coordination wakes discovery then, as a rebalance would."""

    def __init__(self) -> None:
        super().__init__()
        self.discovery: Discovery | None = None

    def owns(self, task_id: str) -> bool:
        if self.discovery is not None and not self.asked:
            self.discovery.wake()
        return super().owns(task_id)


async def test_a_wake_during_a_listing_is_not_lost(rig: Rig) -> None:
    slow_task(rig)
    claims = _WakingClaims()
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, interval_s=60.0, claims=claims)
    claims.discovery = discovery

    async with running(discovery, supervisor):
        await wait_until(lambda: discovery.rounds >= 1, "the first listing")
        await wait_until(lambda: discovery.rounds >= 2, "the listing the wake asked for", 1.5)


async def test_an_unseen_end_whose_status_fetch_failed_is_published_later(rig: Rig) -> None:
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor)
    await discovery.reconcile()  # the baseline
    quick = slow_task(rig, stopped=True)
    rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["get"], status=503, next_n=1)])

    await discovery.reconcile()  # finish_unseen: its status fetch fails, once
    await wait_until(lambda: rig.emulator.inbox.answers["get 503"] == 1, "the failed fetch")
    await wait_until(lambda: supervisor.followed == 0, "the worker to end")
    await discovery.reconcile()
    await discovery.reconcile()

    await wait_until(ended(quick, rig), "its end", 1.0)


# --- hostile platform: one listing's trouble stays its own ---------------------


async def test_an_agent_answered_404_and_one_that_never_answers_delay_no_other(
    rig: Rig,
) -> None:
    rig.emulator.set_faults(
        http=[
            HttpFaultRule(endpoints=["list_tasks"], ids=["a-typo"], status=404, share=1.0),
            HttpFaultRule(endpoints=["list_tasks"], ids=["a-hangs"], hang=True, share=1.0),
        ]
    )
    live = slow_task(rig)
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(
        rig, supervisor, interval_s=0.05, agent_ids=["a-typo", "a-hangs", AGENT]
    )
    async with running(discovery, supervisor):
        await wait_until(lambda: supervisor.is_known(live), "the good agent's task followed")
        await wait_until(
            lambda: rig.metric("xpander_bridge_listing_failing", owner="a-typo") == 1,
            "the typo reported",
        )
        later = slow_task(rig)  # discovery keeps going while the others fail
        await wait_until(lambda: supervisor.is_known(later), "a later task followed too")
    not_found = {"owner": "a-typo", "reason": "not_found"}
    assert rig.metric("xpander_bridge_listing_errors_total", **not_found) >= 2
    assert rig.metric("xpander_bridge_listing_failing", owner=AGENT) == 0
    ok, detail = rig.health.listings_reports[-1]
    assert ok and "a-typo" in detail and "404" in detail
    assert rig.health.refusals == []


async def test_when_every_listing_fails_the_listings_are_not_ready(rig: Rig) -> None:
    rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["list_tasks"], status=404, share=1.0)])
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, agent_ids=["a-1", "a-2"])
    await discovery.reconcile()
    assert rig.health.listings_reports[-1][0] is False
    assert rig.health.reachable_count == 0


async def test_a_listing_that_failed_a_while_does_not_make_its_tasks_look_new(rig: Rig) -> None:
    history = slow_task(rig, stopped=True)
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, interval_s=0.01)
    async with running(discovery, supervisor):
        await wait_until(lambda: discovery.rounds >= 1, "the baseline")
        rig.emulator.set_faults(
            http=[HttpFaultRule(endpoints=["list_tasks"], status=503, next_n=3)]
        )
        errors = {"owner": AGENT, "reason": "server_error"}
        await wait_until(
            lambda: rig.metric("xpander_bridge_listing_errors_total", **errors) >= 3,
            "three failed listings",
        )
        done = discovery.rounds
        await wait_until(lambda: discovery.rounds > done, "the listing to recover")
    assert not supervisor.is_known(history)
    assert rig.published.envelopes(history) == []


# --- live listings and full ones: the cost follows live tasks, not history -------

HISTORY = 5_000


def listed_bytes(rig: Rig, *, filtered: bool) -> int:
    """Body bytes the emulator sent for the agent listing, filtered by status or not."""
    return sum(
        sent
        for key, sent in rig.emulator.inbox.list_bytes.items()
        if key.startswith("list_tasks") and ("status=" in key) == filtered
    )


def test_live_listings_ask_for_every_non_terminal_status() -> None:
    assert set(LIVE_STATUSES) == STATUSES - TERMINAL_STATUSES
    assert len(LIVE_STATUSES) == len(set(LIVE_STATUSES))


def test_a_full_listing_comes_every_twelve_live_ones_unless_configured() -> None:
    assert DiscoveryConfig().full_listing_interval_s == 12.0
    assert DiscoveryConfig(interval_s=0.2).full_listing_interval_s == pytest.approx(2.4)
    assert DiscoveryConfig(interval_s=0.2, full_interval_s=30).full_listing_interval_s == 30.0


async def test_the_live_interval_stretches_to_keep_within_the_request_budget(rig: Rig) -> None:
    supervisor = TaskSupervisor(rig.context)
    few = discovery_for(
        rig, supervisor, interval_s=1.0, agent_ids=["a", "b"], max_listing_requests_per_s=10
    )
    assert few.live_interval_s == 1.0  # 6 requests a round, 10 a second allowed
    many = [f"agent-{i}" for i in range(20)]
    stretched = discovery_for(
        rig, supervisor, interval_s=1.0, agent_ids=many, max_listing_requests_per_s=10
    )
    assert stretched.live_interval_s == pytest.approx(6.0)  # 60 requests at 10 a second
    budget = discovery_for(
        rig, supervisor, interval_s=1.0, agent_ids=many, max_listing_requests_per_s=120
    )
    assert budget.live_interval_s == 1.0


async def test_the_next_full_listing_waits_until_live_ones_listed_as_much_as_it_did() -> None:
    # 5,003 tasks in a full listing; a live round counts as 100 at least: the
    # next full one comes after ~50 live rounds, not after full_interval_s.
    async with open_rig(fast_settings(agent_ids=[AGENT], history_per_agent=HISTORY)) as rig:
        live = [slow_task(rig) for _ in range(3)]
        supervisor = TaskSupervisor(rig.context)
        discovery = discovery_for(
            rig, supervisor, interval_s=0.01, full_interval_s=0.02, full_interval_max_s=600.0
        )
        async with running(discovery, supervisor):
            await wait_until(lambda: discovery.full_rounds >= 2, "a second full listing", 30)
            rounds = discovery.rounds
            assert all(supervisor.is_known(task_id) for task_id in live)
        live_rounds = rounds - 2
        assert math.ceil((HISTORY + len(live)) / 100) <= live_rounds <= 60
        full, live_bytes = listed_bytes(rig, filtered=False), listed_bytes(rig, filtered=True)
        # What the history costs is spread: full listings weigh many live ones.
        assert full > 50 * live_bytes / live_rounds


async def test_full_listings_come_by_full_interval_max_s_however_long_the_history() -> None:
    async with open_rig(fast_settings(agent_ids=[AGENT], history_per_agent=HISTORY)) as rig:
        supervisor = TaskSupervisor(rig.context)
        discovery = discovery_for(
            rig, supervisor, interval_s=0.05, full_interval_s=0.1, full_interval_max_s=0.3
        )
        async with running(discovery, supervisor):
            await wait_until(lambda: discovery.full_rounds >= 3, "full listings by the max", 30)
            rounds = discovery.rounds
        # Two full listings after the baseline, long before 2 x 50 live rounds.
        assert rounds < 40


async def test_a_live_round_costs_what_the_live_tasks_weigh_not_the_history() -> None:
    async with open_rig(fast_settings(agent_ids=[AGENT], history_per_agent=HISTORY)) as rig:
        live = [slow_task(rig) for _ in range(3)]
        supervisor = TaskSupervisor(rig.context)
        discovery = discovery_for(rig, supervisor, interval_s=0.05, full_interval_s=60.0)
        async with running(discovery, supervisor):
            await wait_until(lambda: discovery.rounds >= 4, "a baseline and live rounds")
            assert all(supervisor.is_known(task_id) for task_id in live)
        # Read once the loop stopped; a live round cut short may be counted by
        # the emulator and not by discovery: hence "+ 1" below.
        full_rounds, rounds = discovery.full_rounds, discovery.rounds
        full, live_bytes = listed_bytes(rig, filtered=False), listed_bytes(rig, filtered=True)
        # One full listing (the baseline), then live ones only, each asking for
        # the non-terminal statuses and nothing else.
        assert full_rounds == 1
        assert rig.emulator.inbox.list_bytes.keys() == {"list_tasks"} | {
            f"list_tasks status={status}" for status in LIVE_STATUSES
        }
        assert full > HISTORY * 200  # the history is there, and it weighs
        # Every live round after the baseline, together, weighs less than 1 %
        # of the one full listing: three live tasks, not 5,003 tasks.
        assert rounds - full_rounds >= 3
        assert 0 < live_bytes < full / 100
        # About one list item (~500 bytes) per live task and round.
        assert live_bytes < (rounds - full_rounds + 1) * len(live) * 1_000


async def test_a_task_that_starts_and_ends_between_two_live_rounds_is_published_by_a_full_one(
    rig: Rig,
) -> None:
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, full_interval_s=60.0)
    await discovery.reconcile()  # the baseline (full)
    quick = slow_task(rig, stopped=True, outcome="completed")  # started and ended in between

    await discovery.reconcile(full=False)  # a live round cannot see it
    assert not supervisor.is_known(quick)
    assert rig.emulator.inbox.calls["get"] == 0 and rig.published.envelopes(quick) == []

    await discovery.reconcile(full=True)  # the full round does
    await wait_until(ended(quick, rig), "its end")
    await wait_until(lambda: supervisor.followed == 0, "the worker to end")
    published = rig.published.envelopes(quick)
    assert [e["sse_id"] for e in published] == [e.id for e in rig.emulator.events(quick)]
    assert (published[-1]["type"], published[-1]["status"]) == ("task_finished", "stopped")


async def test_the_full_listing_comes_every_full_interval_and_publishes_unseen_ends(
    rig: Rig,
) -> None:
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, interval_s=0.05, full_interval_s=0.5)
    async with running(discovery, supervisor):
        await wait_until(lambda: discovery.full_rounds == 1, "the baseline")
        quick = slow_task(rig, stopped=True)
        await wait_until(ended(quick, rig), "its end, from the next full listing", 2.0)
        # Live rounds ran meanwhile, but only a full one could find it.
        assert discovery.full_rounds >= 2 and discovery.rounds > discovery.full_rounds
    published = rig.published.envelopes(quick)
    assert [e["sse_id"] for e in published] == [e.id for e in rig.emulator.events(quick)]
    assert published[-1]["type"] == "task_finished"


async def test_a_live_task_is_found_within_one_interval(rig: Rig) -> None:
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, interval_s=0.5, full_interval_s=60.0)
    loop = asyncio.get_running_loop()
    async with running(discovery, supervisor):
        await wait_until(lambda: discovery.rounds == 1, "the baseline")
        task_id = slow_task(rig)
        started = loop.time()
        await wait_until(lambda: supervisor.is_known(task_id), "the live listing to find it", 1.0)
        found_after = loop.time() - started
        # Found by a live round: the next full one is a minute away.
        assert discovery.full_rounds == 1
        await wait_until(lambda: rig.run_of(task_id).subscribers == 1, "its stream")
    assert found_after <= 0.5 + 0.4  # one interval, and some slack for a busy machine


async def test_tasks_seen_by_live_rounds_are_not_new_to_the_full_one(rig: Rig) -> None:
    followed = slow_task(rig)
    elsewhere = slow_task(rig)
    claims = SetClaims(owned=set())
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, claims=claims, full_interval_s=60.0)
    await discovery.reconcile()  # the baseline: both pending, neither owned yet
    claims.owned = {followed}
    seen_live = slow_task(rig)  # appears in a live round only
    claims.owned.add(seen_live)
    await discovery.reconcile(full=False)
    await wait_until(lambda: rig.run_of(seen_live).subscribers == 1, "its stream")
    assert supervisor.is_known(followed) and supervisor.is_known(seen_live)

    # It ends while followed: the stream publishes its end, once.
    rig.emulator.engine.stop(rig.run_of(seen_live))
    # The other one ends while another replica streams it, then comes here.
    rig.emulator.engine.stop(rig.run_of(elsewhere))
    await wait_until(ended(seen_live, rig), "the streamed end")
    await discovery.reconcile(full=False)  # neither is live any more
    claims.owned.add(elsewhere)
    await discovery.reconcile(full=True)

    await wait_until(ended(elsewhere, rig), "the end of the task seen running elsewhere")
    await asyncio.sleep(0.2)  # a second end, if any, would come now
    assert rig.published.types(seen_live).count("task_finished") == 1
    assert rig.published.types(elsewhere).count("task_finished") == 1
    await supervisor.stop()


async def test_a_wake_brings_a_full_listing(rig: Rig) -> None:
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, interval_s=0.05, full_interval_s=60.0)
    async with running(discovery, supervisor):
        await wait_until(lambda: discovery.rounds >= 3, "the baseline and live rounds")
        assert discovery.full_rounds == 1
        discovery.wake()
        await wait_until(lambda: discovery.full_rounds == 2, "the full listing the wake asked for")


async def test_a_task_a_live_round_saw_is_not_new_to_the_next_full_one(rig: Rig) -> None:
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, full_interval_s=60.0)
    await discovery.reconcile()  # the baseline: nothing yet
    task_id = slow_task(rig)
    await discovery.reconcile(full=False)  # seen running, followed
    await wait_until(lambda: rig.run_of(task_id).subscribers == 1, "its stream")
    await supervisor.release(lambda t: t == task_id)  # its worker is gone
    rig.emulator.engine.stop(rig.run_of(task_id))

    await discovery.reconcile(full=True)

    # As if every listing had been full: listed before, so it did not start
    # and end in between; nothing is made up for it (no status fetch, no end).
    await asyncio.sleep(0.2)
    assert rig.emulator.inbox.calls["get"] == 0
    assert "task_finished" not in rig.published.types(task_id)
    await supervisor.stop()


async def test_a_wake_during_a_full_listing_brings_another_full_one(rig: Rig) -> None:
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, interval_s=0.05, full_interval_s=60.0)
    rig.emulator.set_faults(delay_s=0.3, delay_endpoints=["list"])
    async with running(discovery, supervisor):
        await wait_until(lambda: rig.emulator.inbox.calls["list"] == 1, "the baseline asked")
        discovery.wake()  # while the baseline (full) is under way
        await wait_until(lambda: discovery.full_rounds == 2, "the full listing the wake asked for")


async def test_a_failed_full_listing_is_retried_as_a_full_one(rig: Rig) -> None:
    supervisor = TaskSupervisor(rig.context)
    discovery = discovery_for(rig, supervisor, interval_s=0.5, full_interval_s=60.0)
    async with running(discovery, supervisor):
        await wait_until(lambda: discovery.rounds == 1, "the baseline")
        # the next live round is 0.5 s away: the failure hits the wake's listing
        rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["list"], status=503, next_n=1)])
        discovery.wake()  # asks for a full listing; it fails once
        await wait_until(lambda: rig.emulator.inbox.answers["list 503"] == 1, "the failure")
        await wait_until(lambda: discovery.full_rounds == 2, "the full listing, retried")
    assert rig.emulator.inbox.list_bytes["list_tasks"] > 0
