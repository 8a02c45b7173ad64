"""``xpander-bridge demo``: the emulator, the embedded broker and the bridge in
one process tree, with a live summary in the terminal until Ctrl-C.

Nothing here is demo-only logic: the bridge is the same ``Bridge`` that
``run`` starts, configured to point at the emulator and the broker. The
summary is read from the bridge's own metrics (the figures the dashboard
shows, since the start rather than per minute): events by type, and per
agent the tasks by status, duration p50/p95, tokens, tool errors, paused
tasks now and the oldest one's age; then the paused tasks themselves (the
emulator's demo scenario pauses some tasks for a while, as a task waiting for
a human approval would, then resumes them). Once the bridge is ready, the
demo writes a create command to the commands topic as ``xpander-bridge
command`` does, and shows the round trip: the reply, and the created task's
first event on the events topic (the header prints the command to try it by
hand). Without a terminal, one line a second and the whole summary once at
the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shlex
import signal
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

import orjson
from prometheus_client.metrics import MetricWrapperBase

from bridge.app import Bridge
from bridge.command_cli import reply_reader, send_command
from bridge.config import BridgeConfig
from bridge.emulator import Emulator
from bridge.emulator.scenarios import preset
from bridge.emulator.settings import EmulatorSettings
from bridge.errors import ConfigError, UnavailableError
from bridge.kafka.embedded import EmbeddedBroker
from bridge.observability.logging import configure_logging
from bridge.observability.metrics import Metrics
from bridge.tail.options import Start, StartAt
from bridge.tail.reader import TailError, TopicReader

__all__ = [
    "DEMO_KAFKA_PORT",
    "KAFKA_PORT_ENV",
    "AgentFigures",
    "CommandRoundTrip",
    "agent_figures",
    "demo_kafka_port",
    "histogram_quantile",
    "run_demo",
    "tail_command",
]

#: The demo's broker listens here while the demo runs, so the command that
#: tails it stays the same from one run to the next.
DEMO_KAFKA_PORT = 19092
#: Another port for the demo's broker (0: any free port); ``--kafka-port`` wins.
KAFKA_PORT_ENV = "XPANDER_BRIDGE_DEMO_KAFKA_PORT"


def demo_kafka_port(environ: Mapping[str, str] | None = None) -> int:
    """The port from ``$XPANDER_BRIDGE_DEMO_KAFKA_PORT``, else ``DEMO_KAFKA_PORT``."""
    raw = (os.environ if environ is None else environ).get(KAFKA_PORT_ENV, "").strip()
    if not raw:
        return DEMO_KAFKA_PORT
    if not raw.isdigit() or int(raw) > 65535:
        raise ConfigError(
            f"{KAFKA_PORT_ENV}: a port number from 0 to 65535 (got {raw!r})", field=KAFKA_PORT_ENV
        )
    return int(raw)


def _program() -> str:
    """This program, as it was started (``.venv/bin/xpander-bridge`` from ``make demo``)."""
    program = sys.argv[0] if sys.argv else ""
    if os.path.basename(program) == "xpander-bridge":
        return shlex.quote(program)
    return f"{shlex.quote(sys.executable)} -m bridge"


def tail_command(bootstrap_servers: str) -> str:
    """The command that follows the demo's events."""
    return f"{_program()} tail --bootstrap {bootstrap_servers} --text"


def create_command(bootstrap_servers: str, agent_id: str) -> str:
    """The command that starts a task through the demo's commands topic."""
    return (
        f"{_program()} command --bootstrap {bootstrap_servers} create --agent {agent_id} "
        "--prompt 'hello from Kafka' --wait"
    )


class CommandRoundTrip:
    """One create command through Kafka, timed from the send: its reply on the
    results topic, and the created task's first event on the events topic."""

    def __init__(self, bridge: Bridge, agent_id: str) -> None:
        self._bridge = bridge
        self._agent_id = agent_id
        self.line = "command round trip: waiting for the command consumer's partitions"
        #: the round trip has ended (its line is final)
        self.done = False

    async def run(self, timeout_s: float = 60.0) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._run()
        except TimeoutError:
            self.line = f"command round trip: FAILED, not done within {timeout_s:g}s"
        except (TailError, UnavailableError) as exc:
            self.line = f"command round trip: FAILED, {exc}"
        self.done = True

    async def _run(self) -> None:
        consumer = self._bridge.commands
        while consumer is None or not consumer.assigned:
            await asyncio.sleep(0.1)
            consumer = self._bridge.commands
        config = self._bridge.config
        events = TopicReader(config.kafka, config.topics.events, timeout_s=10)
        replies = reply_reader(config.kafka, config.commands)
        try:
            events.start(Start(StartAt.TIME, since_ms=int(time.time() * 1000) - 1000))
            self.line = "command round trip: create sent, waiting for the reply"
            started = time.monotonic()
            message = {
                "command": "create",
                "command_id": f"demo-{uuid.uuid4()}",
                "agent_id": self._agent_id,
                "prompt": "a task started from Kafka by the demo",
            }
            sent = await send_command(config.kafka, config.commands, message)
            reply = await _next_value(replies, sent.command_id)
            replied = time.monotonic() - started
            outcome = str(orjson.loads(reply).get("outcome"))
            self.line = (
                f"command round trip: create -> reply {outcome} in {replied:.2f}s, "
                f"waiting for task {sent.key}'s first event"
            )
            first = str(orjson.loads(await _next_value(events, sent.key)).get("type"))
            seen = time.monotonic() - started
            self.line = (
                f"command round trip: create -> reply {outcome} in {replied:.2f}s, task "
                f"{sent.key}'s first event ({first}) on {config.topics.events} in {seen:.2f}s"
            )
        finally:
            events.close()
            replies.close()


async def _next_value(reader: TopicReader, key: str) -> bytes:
    """The value of the next record keyed ``key`` (the caller bounds the wait).
    Each poll runs in a thread and is let finish even when this is cancelled:
    the reader is closed after, never under a poll."""
    wanted = key.encode()
    while True:
        poll = asyncio.ensure_future(asyncio.to_thread(reader.poll, 0.5))
        try:
            messages = await asyncio.shield(poll)
        except asyncio.CancelledError:
            await poll
            raise
        for message in messages:
            if message.key == wanted and message.value is not None:
                return message.value


async def _start_broker(port: int) -> tuple[EmbeddedBroker, str]:
    """The embedded broker on *port*, or on a free one when *port* is taken (and
    a note saying so)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--kafka-port: a port number from 0 to 65535 (got {port})")
    if port:
        try:
            return await EmbeddedBroker(port=port).astart(), ""
        except UnavailableError as exc:
            if "AddrInUse" not in str(exc) and "Address in use" not in str(exc):
                raise
        broker = await EmbeddedBroker().astart()
        return broker, f"port {port} is taken: the demo's Kafka broker listens on {broker.port}"
    return await EmbeddedBroker().astart(), ""


def _samples(metric: MetricWrapperBase, label: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                totals[sample.labels.get(label, "")] += sample.value
    return totals


def _labelled(metric: MetricWrapperBase, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of the samples called ``name`` (e.g. ``..._bucket``)."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == name:
                yield sample.labels, float(sample.value)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of cumulative bucket counts (upper bound -> count, +Inf
    included), interpolated within its bucket as Prometheus's
    ``histogram_quantile`` does; None without observations."""
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf:
        return None
    total = buckets[math.inf]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == math.inf:
                return lower  # in the open bucket: its lower bound, as Prometheus says
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


class AgentFigures:
    """One agent's figures, from the bridge's per-agent metrics."""

    __slots__ = (
        "finished",
        "now",
        "oldest_paused_s",
        "p50_s",
        "p95_s",
        "tokens",
        "tool_calls",
        "tool_errors",
    )

    def __init__(self) -> None:
        #: unfinished tasks followed, by status (pending, executing, paused)
        self.now: dict[str, float] = defaultdict(float)
        #: tasks finished, by terminal status
        self.finished: dict[str, float] = defaultdict(float)
        self.p50_s: float | None = None
        self.p95_s: float | None = None
        self.tokens = 0.0
        self.tool_calls = 0.0
        self.tool_errors = 0.0
        self.oldest_paused_s = 0.0


def agent_figures(metrics: Metrics) -> dict[str, AgentFigures]:
    """Per agent label: what the dashboard's agent row shows, since the start."""
    agents: dict[str, AgentFigures] = defaultdict(AgentFigures)
    for labels, value in _labelled(metrics.agent_tasks.metric, "xpander_bridge_agent_tasks"):
        agents[labels["agent_id"]].now[labels["status"]] += value
    finished = metrics.tasks_finished.metric
    for labels, value in _labelled(finished, "xpander_bridge_tasks_finished_total"):
        agents[labels["agent_id"]].finished[labels["status"]] += value
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    duration = metrics.task_duration.metric
    for labels, value in _labelled(duration, "xpander_bridge_task_duration_seconds_bucket"):
        buckets[labels["agent_id"]][float(labels["le"])] += value  # summed over statuses
    for agent, counts in buckets.items():
        agents[agent].p50_s = histogram_quantile(0.50, counts)
        agents[agent].p95_s = histogram_quantile(0.95, counts)
    for labels, value in _labelled(metrics.tokens.metric, "xpander_bridge_tokens_total"):
        agents[labels["agent_id"]].tokens += value
    for labels, value in _labelled(metrics.tool_calls.metric, "xpander_bridge_tool_calls_total"):
        agents[labels["agent_id"]].tool_calls += value
    errors = metrics.tool_errors.metric
    for labels, value in _labelled(errors, "xpander_bridge_tool_errors_total"):
        agents[labels["agent_id"]].tool_errors += value
    oldest = metrics.oldest_paused_task.metric
    for labels, value in _labelled(oldest, "xpander_bridge_oldest_paused_task_seconds"):
        figures = agents[labels["agent_id"]]
        figures.oldest_paused_s = max(figures.oldest_paused_s, value)
    return dict(agents)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


_AGENT_HEADER = (
    f"  {'agent':<20} {'pending':>7} {'exec':>5} {'paused':>6}   "
    f"{'ok':>5} {'failed':>6} {'error':>5} {'stop':>5}   {'p50':>6} {'p95':>6}   "
    f"{'tokens':>9}   {'tool err/calls':>14}   {'oldest paused':>13}"
)


def _agent_line(agent: str, f: AgentFigures) -> str:
    tools = f"{f.tool_errors:.0f}/{f.tool_calls:.0f}"
    oldest = _seconds(f.oldest_paused_s) if f.now.get("paused") else "-"
    return (
        f"  {agent[:20]:<20} {f.now.get('pending', 0):>7.0f} {f.now.get('executing', 0):>5.0f} "
        f"{f.now.get('paused', 0):>6.0f}   {f.finished.get('completed', 0):>5.0f} "
        f"{f.finished.get('failed', 0):>6.0f} {f.finished.get('error', 0):>5.0f} "
        f"{f.finished.get('stopped', 0):>5.0f}   {_seconds(f.p50_s):>6} {_seconds(f.p95_s):>6}   "
        f"{f.tokens:>9.0f}   {tools:>14}   {oldest:>13}"
    )


#: Paused tasks listed by name (the oldest); the rest are counted.
PAUSED_LISTED = 8


def demo_config(emu: Emulator, bootstrap_servers: str, http_port: int) -> BridgeConfig:
    return BridgeConfig.model_validate(
        {
            "platform": {
                "base_url": emu.base_url,
                "api_key": emu.api_key,
                "organization_id": emu.organization_id,
            },
            "discovery": {"agent_ids": list(emu.settings.agent_ids), "interval_s": 1.0},
            # idempotent and transactional (the defaults): the embedded broker has both
            "kafka": {"bootstrap_servers": [bootstrap_servers]},
            "http": {"host": "127.0.0.1", "port": http_port},
            "logging": {"format": "text", "level": "WARNING"},
            # a short session: the first assignment comes sooner (tansu waits half of it)
            "commands": {"enabled": True, "session_timeout_ms": 3000, "heartbeat_interval_ms": 500},
        }
    )


class Summary:
    """Renders the once-a-second view from the bridge's own metrics."""

    def __init__(
        self,
        bridge: Bridge,
        emu: Emulator,
        out: TextIO,
        note: str = "",
        round_trip: CommandRoundTrip | None = None,
    ) -> None:
        self._bridge = bridge
        self.round_trip = round_trip
        self._emu = emu
        self._out = out
        self._last: dict[str, float] = {}
        self._last_time = time.monotonic()
        self._tty = out.isatty()
        self.total_published = 0.0
        self.tail_command = tail_command(bridge.config.kafka.bootstrap_servers[0])
        self.create_command = create_command(
            bridge.config.kafka.bootstrap_servers[0], emu.settings.agent_ids[0]
        )
        self._note = note
        self._round_trip_shown = False

    def header(self) -> str:
        return (
            f"xpander-bridge demo   emulator {self._emu.base_url}   "
            f"kafka {self._bridge.config.kafka.bootstrap_servers[0]}   "
            f"metrics http://127.0.0.1:{self._bridge.http.port if self._bridge.http else '-'}"
            "/metrics\n"
            + (f"{self._note}\n" if self._note else "")
            + f"watch the events:  {self.tail_command}\n"
            + f"start a task:      {self.create_command}"
        )

    def render(self) -> str:
        metrics = self._bridge.metrics
        now = time.monotonic()
        received = _samples(metrics.sse_events_received.metric, "event_type")
        elapsed = max(1e-6, now - self._last_time)
        rates = {t: (received[t] - self._last.get(t, 0)) / elapsed for t in received}
        self._last, self._last_time = received, now
        published = _samples(metrics.envelopes_published.metric, "topic")
        self.total_published = sum(published.values())
        finished = _samples(metrics.tasks_finished.metric, "status")
        lines = [
            self.header(),
            "",
            f"events/s {sum(rates.values()):8.0f}   published {self.total_published:10.0f}   "
            f"queue {int(self._bridge.queue.qsize()):6d}/{self._bridge.queue.maxsize}   "
            f"streams {int(_gauge(metrics.active_streams)):5d}",
            "",
            "events/s by type:",
        ]
        for event_type, rate in sorted(rates.items(), key=lambda item: -item[1])[:12]:
            lines.append(f"  {event_type:<24} {rate:8.1f}")
        lines.append("")
        lines.append("tasks finished by status: " + _inline(finished))
        lines.append("emulator tasks by status: " + _inline(self._emu.stats()["tasks_by_status"]))
        lines.append("")
        if self.round_trip is not None:
            lines += [self.round_trip.line, ""]
        lines += self.agent_lines()
        lines.append("")
        lines.append("Ctrl-C stops: streams close, the queue drains, the producer flushes.")
        return "\n".join(lines)

    def agent_lines(self) -> list[str]:
        """The agents' table and the paused tasks, as the bridge counts them."""
        agents = agent_figures(self._bridge.metrics)
        lines = ["agents (tasks now | finished | duration | tokens | tools | oldest paused):"]
        lines.append(_AGENT_HEADER)
        for agent in sorted(agents):
            lines.append(_agent_line(agent, agents[agent]))
        paused = self._bridge.agent_stats.paused_tasks()
        lines.append("")
        lines.append(f"paused tasks (waiting for a human): {len(paused)}")
        for agent, task_id, waited in paused[:PAUSED_LISTED]:
            lines.append(f"  {agent[:20]:<20} {task_id:<40} paused {_seconds(waited)}")
        if len(paused) > PAUSED_LISTED:
            lines.append(f"  ... and {len(paused) - PAUSED_LISTED} more")
        return lines

    def paused_now(self) -> int:
        return len(self._bridge.agent_stats.paused_tasks())

    def show(self) -> None:
        text = self.render()
        if self._tty:
            self._out.write("\x1b[H\x1b[2J" + text + "\n")
        else:
            first = next((line for line in text.splitlines() if line.startswith("events/s")), "")
            self._out.write(f"{first.strip()}   paused {self.paused_now()}\n")
            if self.round_trip is not None and self.round_trip.done and not self._round_trip_shown:
                self._out.write(self.round_trip.line + "\n")  # once, when it is known
                self._round_trip_shown = True
        self._out.flush()


def _gauge(metric: MetricWrapperBase) -> float:
    for family in metric.collect():
        for sample in family.samples:
            return float(sample.value)
    return 0.0


def _inline(counts: dict[str, Any]) -> str:
    return "  ".join(f"{k}={int(v)}" for k, v in sorted(counts.items())) or "-"


async def run_demo(
    *,
    duration_s: float | None = None,
    http_port: int = 8080,
    kafka_port: int | None = None,
    out: TextIO | None = None,
) -> int:
    """Run until Ctrl-C/SIGTERM (or ``duration_s``); returns the exit code.
    The broker listens on *kafka_port* (default ``demo_kafka_port()``; 0: any)."""
    stream = out or sys.stdout
    port = demo_kafka_port() if kafka_port is None else kafka_port
    configure_logging("WARNING", "text")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    emulator_settings = EmulatorSettings(scenario=preset("demo", interval_s=0.05, max_active=300))
    broker, note = await _start_broker(port)
    try:
        return await _run(broker, note, emulator_settings, http_port, duration_s, stop, stream)
    finally:
        await broker.aclose()


async def _run(
    broker: EmbeddedBroker,
    note: str,
    emulator_settings: EmulatorSettings,
    http_port: int,
    duration_s: float | None,
    stop: asyncio.Event,
    stream: TextIO,
) -> int:
    async with Emulator(emulator_settings) as emu:
        bridge = Bridge(demo_config(emu, broker.bootstrap_servers, http_port))
        await bridge.start()
        emu.start_scenario(emu.settings.scenario)
        round_trip = CommandRoundTrip(bridge, emu.settings.agent_ids[0])
        summary = Summary(bridge, emu, stream, note, round_trip)
        stream.write(summary.header() + "\n\n")
        stream.flush()
        started = time.monotonic()
        trip = asyncio.create_task(round_trip.run())
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await stop.wait()
                summary.show()
                if duration_s is not None and time.monotonic() - started >= duration_s:
                    break
        finally:
            trip.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trip
            if not stream.isatty():
                # the whole summary once: a log or a pipe gets the figures too
                stream.write(f"\n{round_trip.line}\n")
                stream.write("\n" + "\n".join(summary.agent_lines()) + "\n")
            stream.write("\nstopping: draining the queue and flushing the producer...\n")
            report = await bridge.shutdown()
        published = sum(_samples(bridge.metrics.envelopes_published.metric, "topic").values())
        stream.write(
            f"stopped in {report.seconds:.2f}s, {published:.0f} envelopes "
            f"published, {report.undelivered} undelivered\n"
        )
        return 0 if report.clean else 1
