"""Owns one worker per followed task: a stream, or a poller for tasks without one.

Discovery tells it which tasks exist; it starts a worker for each new
non-terminal task, remembers which tasks already ended (so a listing that lags
behind does not start them again), and on shutdown stops every worker.
Stream admission is a FIFO semaphore of ``streams.max_concurrent`` slots
(``WorkerContext.admission``): the task waiting longest gets the next free slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from bridge.core.checkpoint import Checkpoint
from bridge.core.task import TaskState
from bridge.core.values import str_or_none
from bridge.envelope import EventSource
from bridge.errors import AuthError, BridgeError, NotFoundError
from bridge.observability.metrics import DropReason, TrackingMode
from bridge.sources.platform.activity import publish_activity
from bridge.sources.platform.context import WorkerContext
from bridge.sources.platform.poller import TaskPoller
from bridge.sources.platform.stream import StreamOutcome, TaskStreamer
from bridge.wire import TERMINAL_STATUSES

__all__ = ["TaskSupervisor"]

log = logging.getLogger(__name__)

#: How many ended task ids are remembered to ignore a lagging listing.
_ENDED_MEMORY = 200_000
#: How many crashed workers' states are kept for their restart.
_CRASHED_MEMORY = 10_000

#: Called with each new task state (the checkpointer watches them).
StateWatcher = Callable[[TaskState], None]


class TaskSupervisor:
    def __init__(
        self,
        context: WorkerContext,
        *,
        on_follow: StateWatcher | None = None,
        on_release: StateWatcher | None = None,
    ) -> None:
        self._ctx = context
        self._on_follow = on_follow
        #: a task stops being followed here for good (ended, gone, crashed)
        self._on_release = on_release
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._states: dict[str, TaskState] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        #: states of workers that crashed, for their restart (pruned as they restart
        #: or their partition moves; bounded by the tasks followed)
        self._crashed: OrderedDict[str, TaskState] = OrderedDict()
        self._modes = dict.fromkeys(TrackingMode, 0)
        self._stopping = False

    @property
    def followed(self) -> int:
        return len(self._workers)

    def is_known(self, task_id: str) -> bool:
        return task_id in self._workers or task_id in self._ended

    def follow(self, item: dict[str, Any], checkpoint: Checkpoint | None = None) -> None:
        """Start following a task from a listing item (idempotent), from its
        checkpoint when it has one."""
        # Only what the worker needs: the listing item is a large dict, and
        # holding one per followed task for its whole life added up.
        streaming = item.get("events_streaming")
        terminal = item.get("status") in TERMINAL_STATUSES
        self._start(
            item,
            checkpoint,
            lambda state: self._work(state, streaming is not False, terminal),
            "task",
        )

    def finish_unseen(self, item: dict[str, Any], checkpoint: Checkpoint | None = None) -> None:
        """A task that ended unseen (between two listings, or while no replica
        streamed it): emit its end, after its checkpoint's sequence.

        Without a checkpoint, a streaming task's stream is read from the start
        first: a replica may have streamed it and died before its first
        checkpoint committed, so that what it published is in no committed
        transaction. A server that keeps history replays every event (the same
        ``sequence`` and ``event_id`` as any copy); the status check beside the
        stream emits the end if the server has nothing to send."""
        if checkpoint is None and item.get("events_streaming") is not False:
            self._start(
                item, None, lambda state: self._work(state, True, False, ended=True), "task"
            )
            return
        self._start(item, checkpoint, self._end_unseen, "end")

    def fetch_activity(self, checkpoint: Checkpoint) -> None:
        """A task that ended with its activity thread not yet in Kafka (its
        checkpoint says so: the bridge stopped, or the task moved, in between):
        publish the thread, then its final checkpoint follows."""
        if not (checkpoint.finished and checkpoint.activity_due):
            return
        item = {
            "id": checkpoint.task_id,
            "agent_id": checkpoint.agent_id,
            "organization_id": checkpoint.organization_id,
        }
        self._start(item, checkpoint, self._activity_only, "activity")

    def _start(
        self,
        item: dict[str, Any],
        checkpoint: Checkpoint | None,
        work: Callable[[TaskState], Coroutine[Any, Any, None]],
        kind: str,
    ) -> None:
        task_id = item.get("id")
        if not isinstance(task_id, str) or self._stopping or self.is_known(task_id):
            return
        state = self._crashed.pop(task_id, None)
        if state is None:
            state = TaskState(
                task_id=task_id,
                agent_id=str_or_none(item.get("agent_id")),
                organization_id=str_or_none(item.get("organization_id")),
            )
            if checkpoint is not None:
                state.resume(checkpoint)
        self._states[task_id] = state
        if self._on_follow is not None:
            self._on_follow(state)
        worker = asyncio.get_running_loop().create_task(work(state), name=f"{kind}:{task_id}")
        self._workers[task_id] = worker
        worker.add_done_callback(lambda _: self._forget(task_id))

    async def stop(self) -> list[TaskState]:
        """Stop every worker (the first stage of shutdown: stop reading)."""
        self._stopping = True
        return await self.release(lambda _: True)

    async def release(self, which: Callable[[str], bool]) -> list[TaskState]:
        """Stop the workers of the tasks ``which`` selects (ownership moved);
        returns their states, whose checkpoints the caller writes."""
        for task_id in [t for t in self._crashed if which(t)]:
            del self._crashed[task_id]  # a restart elsewhere starts from the checkpoint
        chosen = [task_id for task_id in self._workers if which(task_id)]
        states = [self._states[t] for t in chosen if t in self._states]
        workers = [self._workers[t] for t in chosen]
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        return states

    # --- workers ------------------------------------------------------------

    async def _work(
        self, state: TaskState, streaming: bool, terminal: bool, *, ended: bool = False
    ) -> None:
        try:
            if terminal and state.acked_stream_event_id is None:
                await self._emit_end(state)
            else:
                # A listing that says the task runs is enough to open its stream:
                # fetching every task first doubled the requests and was a quarter
                # of the CPU at 10,000 streams. A task without a stream is found
                # out by the stream's own answer (the streamer falls back to polling).
                outcome = StreamOutcome.NOT_STREAMABLE
                if streaming:
                    stream = TaskStreamer(state, self._ctx, ended=ended).run()
                    outcome = await self._run(TrackingMode.STREAM, stream)
                if outcome is StreamOutcome.NOT_STREAMABLE:
                    await self._run(TrackingMode.POLL, TaskPoller(state, self._ctx).run())
            # The task ended (its task_finished is queued): its activity thread next.
            await publish_activity(state, self._ctx)
        except NotFoundError:
            self._ctx.metrics.tasks_dropped(DropReason.NOT_FOUND).inc()
            log.warning("task vanished before it was followed", extra={"task_id": state.task_id})
        except asyncio.CancelledError:
            raise
        except BridgeError as exc:
            # The first look failed (network, 5xx, auth); the next listing
            # brings the task back since it is forgotten on exit.
            if isinstance(exc, AuthError):
                self._ctx.health.refused(exc)
            log.warning(
                "could not start following a task; retrying at the next listing",
                extra={"task_id": state.task_id, "error": str(exc)},
            )
            self._workers.pop(state.task_id, None)
            return
        except Exception:
            # A bug, not the input (events cannot crash a worker: the transform
            # dead-letters them). The next listing restarts the task from this
            # very state: its sequence goes on, it is never reused.
            self._ctx.metrics.worker_crashes.inc()
            log.exception(
                "task worker crashed; it restarts from its state", extra={"task_id": state.task_id}
            )
            self._crashed[state.task_id] = state
            if len(self._crashed) > _CRASHED_MEMORY:
                self._crashed.popitem(last=False)
            self._workers.pop(state.task_id, None)
            return
        self._remember_ended(state.task_id)

    async def _run(
        self, mode: TrackingMode, work: Coroutine[Any, Any, StreamOutcome]
    ) -> StreamOutcome:
        gauge = self._ctx.metrics.tracked_tasks(mode)
        self._modes[mode] += 1
        gauge.set(self._modes[mode])
        try:
            return await work
        finally:
            self._modes[mode] -= 1
            gauge.set(self._modes[mode])

    async def _end_unseen(self, state: TaskState) -> None:
        """Emit the end of a task that ended unseen, however long the platform
        takes to answer its status: the listing that found it will not again."""
        ctx = self._ctx
        backoff = ctx.reconnect.backoff()
        while True:
            try:
                await self._emit_end(state)
                break
            except NotFoundError:
                ctx.metrics.tasks_dropped(DropReason.NOT_FOUND).inc()
                log.warning("ended task vanished", extra={"task_id": state.task_id})
                return
            except BridgeError as exc:
                if isinstance(exc, AuthError):
                    ctx.health.refused(exc)
                log.warning(
                    "could not fetch an ended task's status; retrying",
                    extra={"task_id": state.task_id, "error": str(exc)},
                )
                await ctx.reconnect.wait(backoff, exc)
        await publish_activity(state, ctx)

    async def _activity_only(self, state: TaskState) -> None:
        """Only the activity thread of a task whose end is already in Kafka."""
        try:
            await publish_activity(state, self._ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug: the checkpoint still says the thread is due, so the next
            # assignment (or a restart) tries again.
            self._ctx.metrics.worker_crashes.inc()
            log.exception("activity worker crashed", extra={"task_id": state.task_id})
            return
        self._remember_ended(state.task_id)

    async def _emit_end(self, state: TaskState) -> None:
        ctx = self._ctx
        snapshot = await ctx.client.get_task(state.task_id)
        if snapshot.get("status") not in TERMINAL_STATUSES:
            return
        records = ctx.transform.from_snapshot(
            state, snapshot, EventSource.RESYNC, asyncio.get_running_loop().time()
        )
        await ctx.publish(records)
        self._remember_ended(state.task_id)

    def _remember_ended(self, task_id: str) -> None:
        self._ended[task_id] = None
        if len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)

    def _forget(self, task_id: str) -> None:
        self._workers.pop(task_id, None)
        state = self._states.pop(task_id, None)
        if state is not None and self._on_release is not None and not self._stopping:
            self._on_release(state)
