"""The lifecycle engine: creates tasks, runs their plans on one scheduler, emits
their events, and applies what the API asks (update, stop, report).

One coroutine runs every task: a heap of (due time, task) is popped in order and
each pop runs one step of one task. A thousand sleeping coroutines would cost a
wake-up each per event; the heap costs a push and a pop, and steps that are due
together are emitted in one go, which is what lets a subscriber write many frames
per ``write()``.

Determinism: each task draws its plan and payloads from ``Random(f"{seed}/{id}")``
and its injected malformed frames from a second generator, so neither depends on
wall-clock time, on other tasks, or on the fault knobs. Ids come from
``content.make_id(seed, namespace, n)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from bridge.emulator import content
from bridge.emulator.lifecycle import OUTCOMES, Plan, build_plan
from bridge.emulator.settings import EmulatorSettings, ScenarioSettings, TaskProfile
from bridge.emulator.tasks import HUGE_LINE, RAW, EventRecord, TaskRun
from bridge.wire import TERMINAL_STATUSES

__all__ = ["Engine", "Stats", "iso_time"]

_MALFORMED_FRAMES = (
    b"data: {not json at all\n\n",
    b'data: {"unexpected": true, "hint": "json that is not an event"}\n\n',
    b"data: [1, 2, 3]\n\n",
    b'data: "a bare string"\n\n',
)
_BATCH = 2000  # steps run before yielding to the loop, so streams get written meanwhile
_INTERNAL_STATUS = {
    "pending": "queued",
    "executing": "running",
    "paused": "awaiting_input",
}


def iso_time(ts: float) -> str:
    """ISO-8601 in UTC with microseconds, as the platform writes times."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


class Stats:
    """Counters the engine and the streams bump; read by ``/_emulator/stats``."""

    __slots__ = (
        "connections",
        "drops",
        "events_emitted",
        "events_sent",
        "malformed_emitted",
        "open_streams",
        "rate_samples",
        "stalls",
        "started_at",
    )

    def __init__(self) -> None:
        self.events_emitted = 0
        self.events_sent = 0
        self.malformed_emitted = 0
        self.connections = 0
        self.open_streams = 0
        self.drops = 0
        self.stalls = 0
        self.started_at = time.monotonic()
        # (monotonic time, events_emitted, events_sent), one a second
        self.rate_samples: list[tuple[float, int, int]] = [(self.started_at, 0, 0)]

    def sample(self) -> None:
        self.rate_samples.append((time.monotonic(), self.events_emitted, self.events_sent))
        del self.rate_samples[:-10]

    def rates(self) -> tuple[float, float]:
        """Events emitted and sent per second over the last few seconds."""
        now = (time.monotonic(), self.events_emitted, self.events_sent)
        then = self.rate_samples[0]
        span = now[0] - then[0]
        if span <= 0:
            return 0.0, 0.0
        return (now[1] - then[1]) / span, (now[2] - then[2]) / span


class Engine:
    """Owns every task and the scheduler that runs them."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.tasks: dict[str, TaskRun] = {}
        self._heap: list[tuple[float, int, TaskRun]] = []
        self._order = itertools.count()
        self._id_counters: dict[str, itertools.count[int]] = {}
        self._scenario_runs = itertools.count()
        self._wakeup: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._scenarios: set[asyncio.Task[None]] = set()
        self._finished_signal: asyncio.Event | None = None
        self.closed = False
        self.closing: asyncio.Event | None = None

    # -- lifetime -------------------------------------------------------------

    async def start(self) -> None:
        self.closing = asyncio.Event()
        self._finished_signal = asyncio.Event()
        self._runner = asyncio.create_task(self._run(), name="emulator-scheduler")
        self._sampler = asyncio.create_task(self._sample(), name="emulator-stats")
        if self.settings.history_per_agent:
            self.seed_history(self.settings.history_per_agent)
        if self.settings.scenario.task_count != 0:
            self.start_scenario(self.settings.scenario)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.closing is not None:
            self.closing.set()
        tasks = [t for t in (self._runner, self._sampler, *self._scenarios) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for run in self.tasks.values():
            run.wake()

    # -- ids ------------------------------------------------------------------

    def next_id(self, namespace: str) -> str:
        counter = self._id_counters.setdefault(namespace, itertools.count())
        return content.make_id(self.settings.seed, namespace, next(counter))

    # -- creating tasks -------------------------------------------------------

    def create_task(  # noqa: PLR0913  (keyword-only knobs of a test double)
        self,
        agent_id: str,
        *,
        streaming: bool,
        task_id: str | None = None,
        namespace: str = "api",
        text: str | None = None,
        files: list[str] | None = None,
        user: dict[str, Any] | Literal["auto"] | None = "auto",
        profile: TaskProfile | None = None,
        outcome: str | None = None,
        events: int | None = None,
        extra: dict[str, Any] | None = None,
        parent: TaskRun | None = None,
        autostart: bool = True,
    ) -> TaskRun:
        """Create a task at status pending. It starts now, or on its first
        subscriber when it streams and ``stream.start_on_subscribe`` is set."""
        settings = self.settings
        task_id = task_id or self.next_id(namespace)
        profile = profile or settings.tasks
        rng = random.Random(f"{settings.seed}/{task_id}")
        fault_rng = random.Random(f"{settings.seed}/{task_id}/faults")
        plan = build_plan(rng, profile, streaming=streaming, outcome=outcome, events=events)
        now = iso_time(time.time())
        if user == "auto":
            who = settings.user_ids[rng.randrange(len(settings.user_ids))]
            user = {"id": who, "email": f"{who}@emulator.local", "first_name": who}
        wire: dict[str, Any] = {
            "id": task_id,
            "agent_id": agent_id,
            "organization_id": settings.organization_id,
            "input": {
                "text": text if text is not None else content.prompt_text(rng, _who(user)),
                "files": files or [],
                "user": user,
            },
            "status": "pending",
            "internal_status": "queued",
            "last_executed_node_id": None,
            "agent_version": None,
            "created_at": now,
            "updated_at": now,
            "started_at": None,
            "paused_at": None,
            "finished_at": None,
            "result": None,
            "parent_execution": parent.id if parent else None,
            "sub_executions": [],
            "is_manually_stopped": False,
            "payload_extension": None,
            "source": "api",
            "output_format": None,
            "output_schema": None,
            "events_streaming": streaming,
            "triggering_agent_id": parent.agent_id if parent else None,
            "title": None,
            "tokens": None,
            "used_tools": [],
            "duration": 0,
            "execution_attempts": 1,
        }
        if extra:
            wire.update(extra)
        run = TaskRun(
            wire=wire,
            streaming=streaming,
            profile=profile,
            rng=rng,
            fault_rng=fault_rng,
            plan=plan,
            is_child=parent is not None,
        )
        self.tasks[task_id] = run
        self._evict()
        if autostart and not (streaming and settings.stream.start_on_subscribe):
            self.schedule(run, 0.0)
        return run

    def seed_history(self, per_agent: int) -> None:
        """``per_agent`` finished tasks for every agent, as a listing shows past
        work: terminal statuses in the profile's shares, result, tokens, times
        a minute apart going back from now. No plan runs, no event is emitted,
        nothing streams (15,000 take about half a second)."""
        settings = self.settings
        profile = settings.tasks
        rng = random.Random(f"{settings.seed}/history")
        plan = Plan(steps=[], delays=[], outcome="completed", pauses=False)
        now = time.time()
        for agent_id in settings.agent_ids:
            for n in range(per_agent):
                task_id = self.next_id("history")
                who = settings.user_ids[rng.randrange(len(settings.user_ids))]
                status = _history_outcome(rng, profile)
                finished = now - 60.0 * (n + 1)
                started = finished - rng.uniform(2.0, 50.0)
                created = started - rng.uniform(0.05, 2.0)
                wire: dict[str, Any] = {
                    "id": task_id,
                    "agent_id": agent_id,
                    "organization_id": settings.organization_id,
                    "input": {
                        "text": content.prompt_text(rng, who),
                        "files": [],
                        "user": {"id": who, "email": f"{who}@emulator.local", "first_name": who},
                    },
                    "status": status,
                    "internal_status": None,
                    "last_executed_node_id": None,
                    "agent_version": None,
                    "created_at": iso_time(created),
                    "updated_at": iso_time(finished),
                    "started_at": iso_time(started),
                    "paused_at": None,
                    "finished_at": iso_time(finished),
                    "result": content.result_text(rng, status),
                    "parent_execution": None,
                    "sub_executions": [],
                    "is_manually_stopped": status == "stopped",
                    "payload_extension": None,
                    "source": "history",
                    "output_format": None,
                    "output_schema": None,
                    "events_streaming": rng.random() < 0.8,
                    "triggering_agent_id": None,
                    "title": None,
                    "tokens": {
                        "completion_tokens": rng.randint(50, 2000),
                        "prompt_tokens": rng.randint(200, 8000),
                    },
                    "used_tools": [],
                    "duration": round(finished - started, 3),
                    "execution_attempts": 1,
                }
                run = TaskRun(
                    wire=wire,
                    streaming=wire["events_streaming"],
                    profile=profile,
                    rng=rng,
                    fault_rng=rng,
                    plan=plan,
                )
                run.started = run.finished = True
                self.tasks[task_id] = run
        self._evict()

    def _evict(self) -> None:
        limit = self.settings.stream.max_tasks
        if len(self.tasks) <= limit:
            return
        target = int(limit * 0.9)
        for task_id in [t.id for t in self.tasks.values() if t.finished and not t.subscribers]:
            if len(self.tasks) <= target:
                break
            del self.tasks[task_id]

    # -- scheduler ------------------------------------------------------------

    def schedule(self, run: TaskRun, delay: float) -> None:
        if run.scheduled or run.finished:
            return
        run.scheduled = True
        self._push(run, asyncio.get_running_loop().time() + delay)

    def _push(self, run: TaskRun, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._order), run))
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while True:
            now = loop.time()
            budget = _BATCH
            while heap and heap[0][0] <= now and budget:
                due, _, run = heapq.heappop(heap)
                budget -= 1
                delay = self._step(run)
                if delay is not None:
                    # keep an absolute schedule so a fixed rate stays fixed, but
                    # do not let a task that fell far behind burst to catch up
                    heapq.heappush(heap, (max(due + delay, now - 0.05), next(self._order), run))
            if not budget:
                await asyncio.sleep(0)
                continue
            self._wakeup = loop.create_future()
            timer = loop.call_at(heap[0][0], _resolve, self._wakeup) if heap else None
            try:
                await self._wakeup
            finally:
                self._wakeup = None
                if timer is not None:
                    timer.cancel()

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.stats.sample()

    # -- steps ----------------------------------------------------------------

    def _step(self, run: TaskRun) -> float | None:
        """Run the next step of ``run``; return the delay to the one after, or None."""
        if run.finished:
            return None
        if run.held:
            # paused through the API: the plan waits for a PATCH back to executing
            run.scheduled = False
            return None
        plan = run.plan
        i = run.step_index
        step = plan.steps[i]
        run.step_index = i + 1
        if step == "start":
            if not run.started:  # a PATCH may have started it already
                self._start(run)
        elif step in {"executing", "resume"}:
            self._set_status(run, "executing")
        elif step == "pause":
            self._set_status(run, "paused")
        elif step == "finish":
            self.terminate(run, plan.outcome, manual=plan.outcome == "stopped")
            return None
        else:
            self._body(run, step)
        if run.step_index >= len(plan.steps) or run.finished:
            return None
        return plan.delays[run.step_index]

    def _start(self, run: TaskRun) -> None:
        run.started = True
        self.emit(run, "task_created", run.wire)

    def _set_status(self, run: TaskRun, status: str) -> None:
        now = time.time()
        wire = run.wire
        wire["status"] = status
        wire["internal_status"] = _INTERNAL_STATUS.get(status)
        wire["updated_at"] = iso = iso_time(now)
        if status == "executing" and wire["started_at"] is None:
            wire["started_at"] = iso
        elif status == "paused":
            wire["paused_at"] = iso
        self.emit(run, "task_updated", wire)

    def _body(self, run: TaskRun, kind: str) -> None:  # noqa: C901  (one branch per event type the emulator writes)
        if not run.streaming:
            return
        rng = run.rng
        data: Any
        if kind == "chunk":
            data = content.chunk_text(rng)
        elif kind == "tool_call_request":
            run.calls += 1
            data = content.tool_call_request_data(rng, f"{run.id}-call-{run.calls}")
            run.open_call = data
        elif kind == "tool_call_result":
            request = run.open_call or content.tool_call_request_data(rng, f"{run.id}-call-0")
            failing = run.plan.outcome in ("failed", "error")
            data = content.tool_call_result_data(
                rng, request, rng.random() < (0.5 if failing else 0.05)
            )
            run.open_call = None
            tools = run.wire["used_tools"]
            if data["tool_name"] not in tools:
                tools.append(data["tool_name"])
        elif kind == "think":
            run.calls += 1
            data = content.think_data(rng, f"{run.id}-call-{run.calls}")
        elif kind == "analyze":
            run.calls += 1
            data = content.analyze_data(rng, f"{run.id}-call-{run.calls}")
        elif kind == "plan_updated":
            run.plan_progress += 1
            data = content.plan_data(rng, run.id, run.plan_progress)
        elif kind == "sub_agent_trigger":
            data = self._sub_agent(run)
        elif kind == "context_status":
            run.context_used += rng.randint(500, 4000)
            data = content.context_status_data(rng, run.context_used)
        elif kind == "future_insight":
            data = content.future_insight_data(rng)
        else:  # a kind named only in the profile's event_mix: carry it as is
            data = {"kind": kind, "note": content.chunk_text(rng).strip()}
        self.emit(run, kind, data)

    def _sub_agent(self, run: TaskRun) -> dict[str, Any]:
        rng = run.rng
        agents = [a for a in self.settings.agent_ids if a != run.agent_id] or [run.agent_id]
        target = agents[rng.randrange(len(agents))]
        child_id: str | None = None
        if rng.random() < run.profile.sub_task_share and not run.is_child:
            run.children += 1
            child = self.create_task(
                target,
                streaming=False,
                task_id=content.make_id(self.settings.seed, f"{run.id}/sub", run.children),
                user=run.wire["input"]["user"],
                profile=run.profile.model_copy(update={"events_per_task": 5, "pause_share": 0.0}),
                parent=run,
            )
            child.wire["source"] = "agent"
            child_id = child.id
            run.wire["sub_executions"].append(child_id)
        return content.sub_agent_data(rng, target, child_id)

    # -- emission (the hot path) -----------------------------------------------

    def emit(self, run: TaskRun, type_: str, data: Any) -> None:
        """Encode one event once, keep it in the task's history, wake its streams."""
        if not run.streaming:
            return
        now = time.time()
        iso = iso_time(now)
        envelope: dict[str, Any] = {
            "type": type_,
            "task_id": run.id,
            "organization_id": self.settings.organization_id,
            "time": iso,
            "data": data,
        }
        if run.profile.stamp_emission:
            envelope["emitted_at"] = now
            if isinstance(data, dict):
                envelope["data"] = {**data, "emitted_at": now}
        body = orjson.dumps(envelope)
        seq = run.last_seq + 1
        run.last_seq = seq
        malformed: bytes | None = None
        share = self.settings.faults.malformed_share
        if share and run.fault_rng.random() < share:
            malformed = _MALFORMED_FRAMES[run.fault_rng.randrange(len(_MALFORMED_FRAMES))]
            self.stats.malformed_emitted += 1
        head = b"id: %d\ndata: " % seq if self.settings.stream.send_ids else b"data: "
        if malformed:
            head = malformed + head
        run.append(
            EventRecord(
                seq,
                type_,
                iso,
                emitted_at=now,
                frame=head + body + b"\n\n",
                body_start=len(head),
                malformed=malformed,
            ),
            self.settings.stream.history_limit,
        )
        self.stats.events_emitted += 1
        if run.waiters:
            run.wake()

    def inject(self, run: TaskRun, data: bytes, *, huge: tuple[int, bytes] | None = None) -> int:
        """Append bytes a test chose (``data`` verbatim, or a huge line of
        (size, fill)) at the current end of a streaming task's history; streams
        write them at their next wake. Returns the seq slot taken: no ``id:`` is
        written for it, the next event's id is one more."""
        if not run.streaming:
            raise ValueError(f"task {run.id} was not created with events_streaming")
        now = time.time()
        seq = run.last_seq + 1
        run.last_seq = seq
        record = EventRecord(
            seq,
            HUGE_LINE if huge else RAW,
            iso_time(now),
            emitted_at=now,
            frame=b"" if huge else data,
            body_start=0,
            malformed=None,
        )
        record.huge = huge
        run.append(record, self.settings.stream.history_limit)
        run.injected += 1
        if huge:
            run.has_huge = True
        run.wake()
        return seq

    # -- what the API asks -----------------------------------------------------

    def subscribe(self, run: TaskRun) -> None:
        run.subscribers += 1
        if not run.scheduled and not run.finished:
            self.schedule(run, 0.0)

    def unsubscribe(self, run: TaskRun) -> None:
        run.subscribers -= 1

    def terminate(
        self, run: TaskRun, status: str, *, manual: bool = False, invent: bool = True
    ) -> None:
        """Bring ``run`` to a terminal status now: task_updated, then task_finished
        (the last event: its streams end after it; with ``linger_after_end``
        there is no task_finished and streams stay open). ``invent`` fills a
        missing result and token counts, as the platform would after a real run."""
        if run.finished:
            return
        if not run.started:
            self._start(run)
        now = time.time()
        wire = run.wire
        iso = iso_time(now)
        wire["status"] = status
        wire["internal_status"] = None
        wire["updated_at"] = iso
        wire["finished_at"] = iso
        if manual:
            wire["is_manually_stopped"] = True
        if invent and wire["result"] is None:
            wire["result"] = content.result_text(run.rng, status)
        if invent and wire["tokens"] is None:
            wire["tokens"] = {
                "completion_tokens": run.rng.randint(50, 2000),
                "prompt_tokens": run.rng.randint(200, 8000),
            }
        started = wire["started_at"]
        if invent and started is not None:
            wire["duration"] = round(now - datetime.fromisoformat(started).timestamp(), 3)
        self.emit(run, "task_updated", wire)
        if self.settings.stream.linger_after_end:
            run.lingers = True
        else:
            self.emit(run, "task_finished", wire)
        run.finished = True
        run.wake()
        if run.finished_future is not None and not run.finished_future.done():
            run.finished_future.set_result(None)
        if self._finished_signal is not None:
            self._finished_signal.set()

    def update(  # noqa: C901  (one branch per updatable field, as the API has them)
        self,
        run: TaskRun,
        *,
        status: str | None = None,
        result: str | None = None,
        payload_extension: dict[str, Any] | None = None,
        source: str | None = None,
    ) -> None:
        """PATCH: fields change; a terminal status ends the task like a stop;
        ``paused`` holds the plan until a PATCH back to ``executing``; every status
        change is emitted as task_updated."""
        wire = run.wire
        if result is not None:
            wire["result"] = result
        if payload_extension is not None:
            wire["payload_extension"] = payload_extension
        if source is not None:
            wire["source"] = source
        wire["updated_at"] = iso_time(time.time())
        if status is not None and not run.finished:
            if status in TERMINAL_STATUSES:
                self.terminate(run, status, manual=status == "stopped")
                return
            if not run.started:
                self._start(run)
            self._set_status(run, status)
            if status == "paused":
                run.held = True
            elif run.held:
                run.held = False
                self.schedule(run, 0.0)
            return
        if status is not None:
            wire["status"] = status
        if not run.finished and run.started:
            self.emit(run, "task_updated", wire)

    def stop(self, run: TaskRun) -> None:
        self.terminate(run, "stopped", manual=True)

    async def wait_finished(self, run: TaskRun) -> None:
        if run.finished:
            return
        if run.finished_future is None:
            run.finished_future = asyncio.get_running_loop().create_future()
        await asyncio.shield(run.finished_future)

    # -- scenarios -------------------------------------------------------------

    def start_scenario(self, scenario: ScenarioSettings) -> str:
        """Start creating tasks as ``scenario`` says; returns the id namespace they get."""
        namespace = f"scenario{next(self._scenario_runs)}"
        task = asyncio.create_task(self._scenario(scenario, namespace), name=namespace)
        self._scenarios.add(task)
        task.add_done_callback(self._scenarios.discard)
        return namespace

    async def _scenario(self, scenario: ScenarioSettings, namespace: str) -> None:
        settings = self.settings
        rng = random.Random(f"{settings.seed}/{namespace}")
        loop = asyncio.get_running_loop()
        mine: set[str] = set()
        due = loop.time()
        created = 0
        while scenario.task_count is None or created < scenario.task_count:
            if scenario.max_active is not None:
                while sum(1 for t in mine if not self._finished(t)) >= scenario.max_active:
                    assert self._finished_signal is not None
                    self._finished_signal.clear()
                    await self._finished_signal.wait()
            agent = settings.agent_ids[rng.randrange(len(settings.agent_ids))]
            streaming = rng.random() < scenario.streaming_share
            run = self.create_task(
                agent,
                streaming=streaming,
                namespace=namespace,
                profile=scenario.profile,
            )
            run.wire["source"] = "scenario"
            mine.add(run.id)
            created += 1
            gap = scenario.arrival_interval_s
            if gap:
                due += gap * rng.uniform(0.5, 1.5)
            # arrivals keep an absolute schedule; sleeping for each of 10,000
            # arrivals 50 µs apart would be neither accurate nor cheap
            wait = due - loop.time()
            if wait > 0.001:
                await asyncio.sleep(wait)
            elif created % 500 == 0:
                await asyncio.sleep(0)

    def _finished(self, task_id: str) -> bool:
        run = self.tasks.get(task_id)
        return run is None or run.finished

    # -- views -----------------------------------------------------------------

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.tasks.values():
            counts[run.status] = counts.get(run.status, 0) + 1
        return counts

    def find(self, predicate: Callable[[TaskRun], bool]) -> list[TaskRun]:
        return [run for run in self.tasks.values() if predicate(run)]


def _history_outcome(rng: random.Random, profile: TaskProfile) -> str:
    """A terminal status drawn with the profile's shares (the rest completed)."""
    draw = rng.random()
    for status, share in zip(
        OUTCOMES[1:], (profile.fail_share, profile.error_share, profile.stop_share), strict=True
    ):
        if draw < share:
            return status
        draw -= share
    return OUTCOMES[0]


def _who(user: dict[str, Any] | None) -> str:
    return str((user or {}).get("id") or "the team")


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
