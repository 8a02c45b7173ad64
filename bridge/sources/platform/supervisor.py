"""Owns one worker per followed task: a stream, or a poller for tasks without one.

Discovery tells it which tasks exist; it starts a worker for each new
non-terminal task, remembers which tasks already ended (so a listing that lags
behind does not start them again), and on shutdown stops every worker.
Stream admission is a FIFO semaphore of ``streams.max_concurrent`` slots: the
task waiting longest gets the next free slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from bridge.config import DiscoveryConfig, StreamsConfig
from bridge.coordination.checkpoints import Checkpoint
from bridge.errors import AuthError, BridgeError, NotFoundError
from bridge.observability.metrics import DropReason, Metrics, TrackingMode
from bridge.platform.client import PlatformClient
from bridge.platform.wire import TERMINAL_STATUSES
from bridge.sources.platform.poller import TaskPoller
from bridge.sources.platform.stream import Publish, StreamOutcome, StreamSettings, TaskStreamer
from bridge.transforms.envelope import EventSource
from bridge.transforms.normalize import Normalizer, TaskState

__all__ = ["TaskSupervisor"]

log = logging.getLogger(__name__)

#: How many ended task ids are remembered to ignore a lagging listing.
_ENDED_MEMORY = 200_000


class TaskSupervisor:
    def __init__(
        self,
        client: PlatformClient,
        normalizer: Normalizer,
        publish: Publish,
        metrics: Metrics,
        streams: StreamsConfig,
        discovery: DiscoveryConfig,
        *,
        on_auth_error: Callable[[AuthError], None] | None = None,
        on_auth_ok: Callable[[], None] | None = None,
        on_new_state: Callable[[TaskState], None] | None = None,
    ) -> None:
        self._on_new_state = on_new_state
        self._client = client
        self._normalizer = normalizer
        self._publish = publish
        self._metrics = metrics
        self._discovery = discovery
        self._settings = StreamSettings(
            streams.reconnect_initial_s, streams.reconnect_max_s, streams.resync_grace_s
        )
        self._admission = asyncio.Semaphore(streams.max_concurrent)
        self._on_auth_error = on_auth_error
        self._on_auth_ok = on_auth_ok
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._states: dict[str, TaskState] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
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
        task_id = item.get("id")
        if not isinstance(task_id, str) or self._stopping or self.is_known(task_id):
            return
        state = self._new_state(task_id, item, checkpoint)
        # Only what the worker needs: the listing item is a large dict, and
        # holding one per followed task for its whole life added up.
        streaming = item.get("events_streaming")
        worker = asyncio.get_running_loop().create_task(
            self._work(
                state,
                streaming if isinstance(streaming, bool) else None,
                item.get("status") in TERMINAL_STATUSES,
            ),
            name=f"task:{task_id}",
        )
        self._workers[task_id] = worker
        worker.add_done_callback(lambda _: self._forget(task_id))

    def finish_unseen(self, item: dict[str, Any], checkpoint: Checkpoint | None = None) -> None:
        """A task that ended unseen (between two listings, or while no replica
        streamed it): emit its end, after its checkpoint's sequence."""
        task_id = item.get("id")
        if not isinstance(task_id, str) or self._stopping or self.is_known(task_id):
            return
        state = self._new_state(task_id, item, checkpoint)
        worker = asyncio.get_running_loop().create_task(
            self._emit_end(state, None), name=f"end:{task_id}"
        )
        self._workers[task_id] = worker
        worker.add_done_callback(lambda _: self._forget(task_id))

    def _new_state(
        self, task_id: str, item: dict[str, Any], checkpoint: Checkpoint | None
    ) -> TaskState:
        state = TaskState(
            task_id=task_id,
            agent_id=_str(item.get("agent_id")),
            organization_id=_str(item.get("organization_id")),
        )
        if checkpoint is not None:
            state.resume(checkpoint)
        self._states[task_id] = state
        if self._on_new_state is not None:
            self._on_new_state(state)
        return state

    async def stop(self) -> list[TaskState]:
        """Stop every worker (the first stage of shutdown: stop reading)."""
        self._stopping = True
        return await self.release(lambda _: True)

    async def release(self, which: Callable[[str], bool]) -> list[TaskState]:
        """Stop the workers of the tasks ``which`` selects (ownership moved);
        returns their states, whose checkpoints the caller writes."""
        chosen = [task_id for task_id in self._workers if which(task_id)]
        states = [self._states[t] for t in chosen if t in self._states]
        workers = [self._workers[t] for t in chosen]
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        return states

    # --- workers ------------------------------------------------------------

    async def _work(self, state: TaskState, streaming: bool | None, terminal: bool) -> None:
        try:
            snapshot: dict[str, Any] | None = None
            resumable = state.acked_stream_event_id is not None
            if terminal and not resumable:
                await self._emit_end(state, None)
                return
            # A listing that says the task runs is enough to open its stream:
            # fetching every task first doubled the requests and was a quarter
            # of the CPU at 10,000 streams. A task without a stream is found
            # out by the stream's own answer (the streamer falls back to polling).
            if streaming is None:
                streaming = True
            outcome = StreamOutcome.NOT_STREAMABLE
            if streaming:
                outcome = await self._run_mode(TrackingMode.STREAM, self._streamer(state).run())
            if outcome is StreamOutcome.NOT_STREAMABLE:
                poller = TaskPoller(
                    state,
                    self._client,
                    self._normalizer,
                    self._publish,
                    self._metrics,
                    interval_s=self._discovery.poll_interval_s,
                    first_snapshot=snapshot,
                )
                await self._run_mode(TrackingMode.POLL, poller.run())
        except NotFoundError:
            self._metrics.tasks_dropped(DropReason.NOT_FOUND).inc()
            log.warning("task vanished before it was followed", extra={"task_id": state.task_id})
        except asyncio.CancelledError:
            raise
        except BridgeError as exc:
            # The first look failed (network, 5xx, auth); the next listing
            # brings the task back since it is forgotten on exit.
            if isinstance(exc, AuthError) and self._on_auth_error is not None:
                self._on_auth_error(exc)
            log.warning(
                "could not start following a task; retrying at the next listing",
                extra={"task_id": state.task_id, "error": str(exc)},
            )
            self._workers.pop(state.task_id, None)
            return
        except Exception:
            log.exception("task worker crashed", extra={"task_id": state.task_id})
            self._workers.pop(state.task_id, None)
            return
        self._remember_ended(state.task_id)

    async def _run_mode(self, mode: TrackingMode, work: Any) -> StreamOutcome:
        self._modes[mode] += 1
        self._metrics.tracked_tasks(mode).set(self._modes[mode])
        try:
            outcome: StreamOutcome = await work
            return outcome
        finally:
            self._modes[mode] -= 1
            self._metrics.tracked_tasks(mode).set(self._modes[mode])

    def _streamer(self, state: TaskState) -> TaskStreamer:
        return TaskStreamer(
            state,
            self._client,
            self._normalizer,
            self._publish,
            self._admission,
            self._metrics,
            self._settings,
            on_auth_error=self._on_auth_error,
            on_auth_ok=self._on_auth_ok,
        )

    async def _emit_end(self, state: TaskState, snapshot: dict[str, Any] | None) -> None:
        if snapshot is None:
            snapshot = await self._client.get_task(state.task_id)
        status = snapshot.get("status")
        if status not in TERMINAL_STATUSES:
            return
        records = self._normalizer.emit(
            state,
            "task_finished",
            snapshot,
            source=EventSource.RESYNC,
            occurred_at=_str(snapshot.get("finished_at")),
            received_at=asyncio.get_running_loop().time(),
            id_material=f"resync\x00{status}\x00{snapshot.get('finished_at')}".encode(),
        )
        await self._publish(records)
        self._remember_ended(state.task_id)

    def _remember_ended(self, task_id: str) -> None:
        self._ended[task_id] = None
        if len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)

    def _forget(self, task_id: str) -> None:
        self._workers.pop(task_id, None)
        self._states.pop(task_id, None)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
