"""``make bench``: the bridge against the official client and a lean ceiling.

For each scenario (burst, wide, steady) and each contender (bridge, lean,
official), in turn and never at the same time:

1. a fresh emulator process with the scenario's tasks, held until subscribed
   (same seed: every contender gets the same tasks and events);
2. the contender as its own process, writing to its own topic on the
   scenario's embedded broker (tansu, its own process);
3. a consumer in this process reads the topic from the start while the
   contender runs: every figure is counted from what is in Kafka, never from
   what a sender says it sent;
4. /proc sampling of the contender's process tree: peak RSS, CPU seconds.

A contender is done when the topic holds every emitted event, or when the
emulator has emitted everything and no record arrived for ``quiet_s`` (the
official client drops event types it does not know), or at the timeout.

    .venv/bin/python -m bench.run              # full: a few minutes
    .venv/bin/python -m bench.run --quick      # under two minutes
    .venv/bin/python -m bench.run --size tiny --scenarios burst --contenders bridge,lean
    .venv/bin/python -m bench.run --quick --scenarios history,live   # discovery cost
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

# The collector stays on aiokafka (the bench extra): its latency floor on the
# embedded broker is ~12 ms where librdkafka's consumer measured ~55 ms, and
# the figures stay comparable with earlier runs.
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bench.emulator_runner import HISTORY_SCENARIOS, live_task_ids
from bench.measure import TreeSampler, descendants
from bridge.kafka.embedded import EmbeddedBroker

__all__ = ["SIZES", "main", "run"]

REPO = Path(__file__).resolve().parent.parent
#: bridge-solo: the bridge with coordination off (one replica, no consumer-group
#: join at start-up), to show what the join costs in the same run;
#: bridge-alo: transactions off (at-least-once), to show what exactly-once costs;
#: bridge-before: the bridge as it was at ``--before`` (a git ref; by default the
#: last commit before librdkafka and transactions), from that commit's own source;
#: bridge-pipelined: ``kafka.transaction_pipeline`` on, only when named (on tansu
#: its read_committed readers see little until the load pauses: measure it with
#: ``--bootstrap-servers`` on Apache Kafka)
CONTENDERS = (
    "bridge",
    "bridge-solo",
    "bridge-alo",
    "bridge-before",
    "lean",
    "official",
    "bridge-pipelined",
)
#: contenders run only when named
_ON_REQUEST = ("bridge-pipelined",)
#: the last main on aiokafka, at-least-once (issue 16 measures against it)
BEFORE_REF = "96c652d"
#: where ``run`` unpacked the ``--before`` source (set only when that contender runs)
_BEFORE_SRC = "BENCH_BEFORE_SRC"
#: history: a long history and live tasks arriving over time, to measure what
#: discovery costs (bytes listed, CPU) and how soon a new task's first event is
#: on Kafka; live: the same live tasks with no history, its baseline
SCENARIOS = ("burst", "wide", "steady", *HISTORY_SCENARIOS)
#: run only when named in ``--scenarios``
EXTRA_SCENARIOS: tuple[str, ...] = ()
#: listings in the first seconds after the live tasks start (the baseline, the
#: one after the group join) are start-up, not the cost per round
STARTUP_S = 20.0
#: what the official client needs per open stream (measured elsewhere: 731 MB at 400
#: tasks, 2.9 GB at 2,000): it runs only where streams x this fits the budget
OFFICIAL_BYTES_PER_STREAM = 1.5 * 1024**2
PARTITIONS = 12  # what the bridge creates; the others get the same

#: scenario parameters per size (the emulator presets' parameters)
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "burst": {"tasks": 400, "events": 100},
        "wide": {"tasks": 2000, "events": 20},
        "steady": {"streams": 10_000, "rate": 2000, "duration_s": 30},
        # finished tasks over 4 agents; live ones arrive over arrival_s once the
        # contender's first listing is answered, each events x interval_s long
        "history": {
            "history": 100_000,
            "agents": 4,
            "live": 1000,
            "arrival_s": 60,
            "events": 20,
            "interval_s": 1.0,
        },
    },
    "quick": {
        "burst": {"tasks": 100, "events": 100},
        "wide": {"tasks": 500, "events": 20},
        "steady": {"streams": 300, "rate": 600, "duration_s": 5},
        "history": {
            "history": 20_000,
            "agents": 4,
            "live": 200,
            "arrival_s": 30,
            "events": 10,
            "interval_s": 1.0,
        },
    },
    "tiny": {
        "burst": {"tasks": 5, "events": 10},
        "wide": {"tasks": 5, "events": 6},
        "steady": {"streams": 5, "rate": 10, "duration_s": 2},
        "history": {
            "history": 200,
            "agents": 4,
            "live": 5,
            "arrival_s": 5,
            "events": 5,
            "interval_s": 0.5,
        },
    },
}


for _params in SIZES.values():
    _params["live"] = {**_params["history"], "history": 0}


@dataclass
class Result:
    scenario: str
    contender: str
    params: dict[str, Any]
    streams: int = 0
    skipped: str | None = None
    emitted: int = 0
    expected: int = 0
    delivered: int = 0
    connected_records: int = 0
    delivered_share: float = 0.0
    time_to_deliver_s: float | None = None
    steady_rate_eps: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_create_p50_ms: float | None = None
    latency_create_p99_ms: float | None = None
    #: history: from a task's creation (the emulator's created_at) to its first
    #: record's CreateTime, over the tasks with a record
    first_event_p50_ms: float | None = None
    first_event_p99_ms: float | None = None
    #: history: listing body bytes the emulator sent the contender, in all
    list_bytes: int | None = None
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0
    cpu_s_at_first_record: float | None = None
    cpu_s_per_10k: float | None = None
    ended_by: str = ""
    exit_code: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- the consumer that counts -------------------------------------------------------


class TopicCounter:
    """Reads every partition of ``topic`` from offset 0, no group (no join wait on
    tansu, nothing committed). Keeps each event's record timestamp, arrival time
    and value; the per-stream ``connected`` handshakes are counted apart, and so,
    when ``only`` names the tasks that count (history: the live ones), are the
    records of other tasks (``others``: the bridge's resync ends of history)."""

    def __init__(self, bootstrap: str, topic: str, only: set[str] | None = None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.only = only
        self.others: list[bytes] = []
        self.values: list[bytes] = []
        self.keys: list[bytes | None] = []
        self.timestamps: list[int] = []
        self.arrivals: list[float] = []
        self.connected = 0
        self.last_arrival = time.monotonic()
        self.first_arrival_cpu: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def delivered(self) -> int:
        return len(self.values)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 30)

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # what a consumer of an exactly-once bridge reads: the latency
            # measured includes the wait for the transaction's commit
            isolation_level="read_committed",
            fetch_max_wait_ms=20,
            max_partition_fetch_bytes=4 * 1024**2,
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            self._ready.set()
            marker = b'"type":"connected"'
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
                if not batch:
                    continue
                now = time.time()
                self.last_arrival = time.monotonic()
                for messages in batch.values():
                    for m in messages:
                        value = m.value or b""
                        if marker in value[:200]:
                            self.connected += 1
                            continue
                        if self.only is not None:
                            key = m.key.decode() if m.key else _task_id(value)
                            if key not in self.only:
                                self.others.append(value)
                                continue
                        self.values.append(value)
                        self.keys.append(m.key)
                        self.timestamps.append(m.timestamp)
                        self.arrivals.append(now)
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- processes --------------------------------------------------------------------------


async def start_emulator(
    scenario: str, params: dict[str, Any], log: Path, report: Path | None = None
) -> tuple[Any, dict[str, Any]]:
    """The emulator's process and its first line; ``report``: where it writes its
    listing counts and live tasks' creation times when it stops."""
    spec = orjson.dumps(
        {"scenario": scenario, "params": params, "report_path": report and str(report)}
    ).decode()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.emulator_runner",
        spec,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=log.open("ab"),
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 120)
    if not line:
        raise RuntimeError(f"the emulator did not start; see {log}")
    return process, orjson.loads(line)


def contender_command(
    name: str, emu: dict[str, Any], bootstrap: str, topic: str
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if name.startswith("bridge"):
        if name == "bridge-before":
            # that commit's bridge ran with idempotence off (aiokafka cannot on tansu)
            env["XPANDER_BRIDGE_KAFKA__ENABLE_IDEMPOTENCE"] = "false"
            env["PYTHONPATH"] = env[_BEFORE_SRC]
        if name == "bridge-solo":
            env["XPANDER_BRIDGE_COORDINATION__ENABLED"] = "false"
        if name == "bridge-alo":
            env["XPANDER_BRIDGE_KAFKA__TRANSACTIONS"] = "false"
        if name == "bridge-pipelined":
            env["XPANDER_BRIDGE_KAFKA__TRANSACTION_PIPELINE"] = "true"
        env.update(
            {
                "XPANDER_BASE_URL": emu["base_url"],
                "XPANDER_API_KEY": emu["api_key"],
                "XPANDER_ORGANIZATION_ID": emu["organization_id"],
                "XPANDER_BRIDGE_AGENT_IDS": ",".join(emu["agent_ids"]),
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "XPANDER_BRIDGE_TOPICS__EVENTS": topic,
                "XPANDER_BRIDGE_TOPICS__STATE": f"{topic}.state",
                "XPANDER_BRIDGE_TOPICS__DLQ": f"{topic}.dlq",
                # each run its own group and checkpoints: the emulator's task ids
                # repeat from run to run (seeded), and a checkpoint of an earlier
                # contender's run would make this one resume them as finished
                "XPANDER_BRIDGE_COORDINATION__TASKS_TOPIC": f"{topic}.tasks",
                "XPANDER_BRIDGE_COORDINATION__CHECKPOINTS_TOPIC": f"{topic}.checkpoints",
                "XPANDER_BRIDGE_COORDINATION__GROUP_ID": f"{topic}.owners",
                # the reports consumer's group too: an earlier contender on
                # librdkafka and bridge-before on aiokafka cannot share one
                # (InconsistentGroupProtocol stops bridge-before)
                "XPANDER_BRIDGE_REPORTS__GROUP_ID": f"{topic}.reports",
                "XPANDER_BRIDGE_HTTP_PORT": "0",  # several runs on one machine
            }
        )
        if name == "bridge-before":
            # -P: not the working directory's package, the unpacked one on PYTHONPATH
            return [sys.executable, "-P", "-m", "bridge", "run"], env
        executable = Path(sys.executable).parent / "xpander-bridge"
        return [str(executable), "run"], env
    argv = [
        sys.executable,
        "-m",
        f"bench.contenders.{name}",
        "--base-url",
        emu["base_url"],
        "--api-key",
        emu["api_key"],
        "--org",
        emu["organization_id"],
        "--agents",
        ",".join(emu["agent_ids"]),
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
    ]
    return argv, env


async def create_topic(bootstrap: str, topic: str) -> None:
    def create() -> None:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
            future.result(10)

    await asyncio.to_thread(create)


async def emulator_stats(client: httpx.AsyncClient, base_url: str) -> dict[str, Any]:
    try:
        response = await client.get(f"{base_url}/_emulator/stats", timeout=10)
        stats: dict[str, Any] = response.json()
        return stats
    except (httpx.HTTPError, ValueError):
        return {}


async def stop_process(
    process: Any, grace_s: float = 30.0, sig: signal.Signals = signal.SIGTERM
) -> int | None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    code: int | None = process.returncode
    return code


async def stop_tree(process: Any, *, profile: bool) -> int | None:
    """SIGTERM the contender (under py-spy: py-spy's child, so that py-spy sees it
    exit and writes its profile); whatever of the tree outlives it is killed."""
    tree = descendants(process.pid)
    if profile and tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(tree[0], signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 60)
    code = await stop_process(process)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return code


# -- one contender on one scenario --------------------------------------------------------


async def run_one(  # noqa: C901, PLR0913, PLR0915  (the harness script of one run, top to bottom)
    scenario: str,
    contender: str,
    params: dict[str, Any],
    bootstrap: str,
    out: Path,
    *,
    quiet_s: float,
    timeout_s: float,
    profile: bool = False,
) -> Result:
    result = Result(scenario, contender, params)
    topic = f"bench.{scenario}.{contender}.{int(time.time())}"
    await create_topic(bootstrap, topic)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    emulator_log = logs / f"{scenario}-{contender}-emulator.log"
    emulator_report = logs / f"{scenario}-{contender}-emulator.json"
    emulator_report.unlink(missing_ok=True)
    emulator, emu = await start_emulator(
        scenario, params, emulator_log, emulator_report if scenario in HISTORY_SCENARIOS else None
    )
    result.streams = emu["tasks"]
    result.expected = emu["expected_events"]
    only = set(live_task_ids(emu["tasks"])) if scenario in HISTORY_SCENARIOS else None
    counter = TopicCounter(bootstrap, topic, only)
    await counter.start()
    argv, env = contender_command(contender, emu, bootstrap, topic)
    if profile:
        # collapsed stacks for flame graphs; the tree's RSS and CPU then include py-spy
        spy = Path(sys.executable).parent / "py-spy"
        folded = out / f"{scenario}-{contender}.folded"
        record = ["record", "--format", "raw", "--rate", "200", "-o", str(folded), "--"]
        argv = [str(spy), *record, *argv]
    log = (logs / f"{scenario}-{contender}.log").open("wb")
    started = time.time()
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    sampler = TreeSampler(process.pid)
    sampler.start()
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        emitted_all = False
        #: when the emulator was first seen done: quiet is counted from then at
        #: the earliest (before, the contender may not have published anything
        #: yet, e.g. while it joins its group, and that is not a quiet topic)
        emitted_at = 0.0
        subscribed_at: float | None = None
        next_stats = 0.0
        while True:
            await asyncio.sleep(0.2)
            if counter.delivered and result.cpu_s_at_first_record is None:
                result.cpu_s_at_first_record = round(sampler.cpu_s, 2)
            if counter.delivered >= result.expected:
                result.ended_by = "all delivered"
                break
            now = time.monotonic()
            if not emitted_all and now >= next_stats:
                stats = await emulator_stats(http, emu["base_url"])
                emitted_all = stats.get("events_emitted", 0) >= result.expected
                if emitted_all:
                    emitted_at = now
                if subscribed_at is None and stats.get("connections", 0) >= result.streams:
                    subscribed_at = time.time()
                next_stats = now + 1.0
            quiet = now - max(counter.last_arrival, emitted_at)
            if process.returncode is not None and quiet > 2.0:
                result.ended_by = f"contender exited ({process.returncode})"
                break
            if emitted_all and quiet > quiet_s:
                result.ended_by = f"emulator done, topic quiet for {quiet_s:g}s"
                break
            if now > deadline:
                result.ended_by = f"timeout after {timeout_s:g}s"
                break
        await sampler.stop()  # CPU and RSS up to here: shutdown not included
        stats = await emulator_stats(http, emu["base_url"])
    result.emitted = int(stats.get("events_emitted", 0))
    result.extra["emulator"] = {
        k: stats.get(k) for k in ("events_sent", "connections", "open_streams", "tasks")
    }
    result.exit_code = await stop_tree(process, profile=profile)
    log.close()
    await asyncio.sleep(0.5)  # anything flushed at shutdown still counts as delivered
    await counter.stop()
    await stop_process(emulator, 10.0)
    if subscribed_at is not None:
        result.extra["all_streams_open_after_s"] = round(subscribed_at - started, 2)
    summarize(result, counter, sampler, started, subscribed_at)
    if scenario in HISTORY_SCENARIOS and emulator_report.exists():
        summarize_history(
            result, counter, orjson.loads(emulator_report.read_bytes()), len(emu["agent_ids"])
        )
    return result


def listing_rounds(requests: dict[str, int], sizes: dict[str, int], agents: int) -> dict[str, Any]:
    """Rounds and bytes per round, from the emulator's per-kind request counts and
    body bytes. A full round is one unfiltered listing per agent; a live round
    one ``status=pending`` listing per agent (with the ``executing`` and
    ``paused`` ones after it: their bytes count to the live rounds)."""
    full_requests = sum(n for k, n in requests.items() if "status=" not in k)
    live_requests = sum(n for k, n in requests.items() if k.endswith("status=pending"))
    full_bytes = sum(b for k, b in sizes.items() if "status=" not in k)
    live_bytes = sum(b for k, b in sizes.items() if "status=" in k)
    full_rounds, live_rounds = full_requests / agents, live_requests / agents
    return {
        "requests": sum(requests.values()),
        "bytes": full_bytes + live_bytes,
        "full_rounds": round(full_rounds, 1),
        "full_bytes": full_bytes,
        "bytes_per_full_round": round(full_bytes / full_rounds) if full_rounds else None,
        "live_rounds": round(live_rounds, 1),
        "live_bytes": live_bytes,
        "bytes_per_live_round": round(live_bytes / live_rounds) if live_rounds else None,
        "bytes_per_round": round((full_bytes + live_bytes) / (full_rounds + live_rounds))
        if full_rounds + live_rounds
        else None,
    }


def after_startup(timeline: list[list[Any]], live_started_at: float | None) -> dict[str, Any]:
    """Listing bytes per second from ``STARTUP_S`` after the live tasks started
    to the last listing: the cost per round once the start-up listings are
    done, whatever the run's length."""
    if live_started_at is None:
        return {}
    since = live_started_at + STARTUP_S
    later = [(at, full, sent) for at, full, sent in timeline if at >= since]
    if len(later) < 2:
        return {}
    window = max(entry[0] for entry in later) - since
    sent = sum(entry[2] for entry in later)
    return {
        "after_startup_s": round(window, 1),
        "after_startup_full_listings": sum(1 for entry in later if entry[1]),
        "after_startup_bytes_per_s": round(sent / window) if window > 0 else None,
    }


def summarize_history(
    result: Result, counter: TopicCounter, report: dict[str, Any], agents: int
) -> None:
    """Bytes listed (in all and per round) and creation-to-first-event per live task."""
    other_types: dict[str, int] = {}
    for value in counter.others:
        with contextlib.suppress(orjson.JSONDecodeError):
            event = orjson.loads(value)
            kind = (
                f"{event.get('type')} ({event.get('source')})" if isinstance(event, dict) else "?"
            )
            other_types[kind] = other_types.get(kind, 0) + 1
    result.extra["history_records"] = {"count": len(counter.others), "by_type": other_types}
    listing = listing_rounds(report.get("list_requests", {}), report.get("list_bytes", {}), agents)
    listing.update(after_startup(report.get("timeline", []), report.get("live_started_at")))
    result.list_bytes = listing["bytes"]
    result.extra["listing"] = listing
    created: dict[str, float] = report.get("created_at", {})
    first: dict[str, int] = {}  # task -> earliest record CreateTime (ms)
    first_read: dict[str, float] = {}  # task -> when the collector first read one
    for key, value, ts, arrival in zip(
        counter.keys, counter.values, counter.timestamps, counter.arrivals, strict=True
    ):
        task = key.decode() if key else _task_id(value)
        if task is None or task not in created:
            continue
        if task not in first or ts < first[task]:
            first[task] = ts
        if task not in first_read or arrival < first_read[task]:
            first_read[task] = arrival
    waits = [first[t] - created[t] * 1000 for t in first]
    read = [(first_read[t] - created[t]) * 1000 for t in first_read]
    result.extra["first_event_tasks"] = f"{len(waits)} of {len(created)}"
    if waits:
        result.first_event_p50_ms = round(_percentile(waits, 0.50), 1)
        result.first_event_p99_ms = round(_percentile(waits, 0.99), 1)
        result.extra["first_event_max_ms"] = round(max(waits), 1)
        result.extra["first_event_read_p50_ms"] = round(_percentile(read, 0.50), 1)
        result.extra["first_event_read_p99_ms"] = round(_percentile(read, 0.99), 1)
        # over start-up (the group join, the first full listings) a new task
        # waits for the bridge, not for discovery: the tasks created after it
        started = report.get("live_started_at")
        if started is not None:
            later = [
                first[t] - created[t] * 1000 for t in first if created[t] >= started + STARTUP_S
            ]
            by_second = sorted((created[t] - started, first[t] - created[t] * 1000) for t in first)
            result.extra["first_event_by_creation"] = [
                [round(at, 1), round(wait)] for at, wait in by_second
            ]
            if later:
                result.extra["first_event_after_startup"] = {
                    "tasks": len(later),
                    "p50_ms": round(_percentile(later, 0.50), 1),
                    "p99_ms": round(_percentile(later, 0.99), 1),
                    "max_ms": round(max(later), 1),
                }


def _task_id(value: bytes) -> str | None:
    with contextlib.suppress(orjson.JSONDecodeError):
        event = orjson.loads(value)
        if isinstance(event, dict) and isinstance(event.get("task_id"), str):
            return str(event["task_id"])
    return None


def _emitted_at(value: bytes) -> float | None:
    """When the emulator emitted this event: ``emitted_at`` (top level or in dict
    data), else the event's own time (``occurred_at`` in the bridge's envelope,
    ``time`` in the platform event), which the emulator sets from the same clock."""
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    stamp = event.get("emitted_at")
    data = event.get("data")
    if stamp is None and isinstance(data, dict):
        stamp = data.get("emitted_at")
    if isinstance(stamp, int | float):
        return float(stamp)
    iso = event.get("occurred_at") or event.get("time")
    if isinstance(iso, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(iso).timestamp()
    return None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summarize(  # noqa: C901  (one figure after another)
    result: Result,
    counter: TopicCounter,
    sampler: TreeSampler,
    started: float,
    subscribed_at: float | None,
) -> None:
    result.delivered = counter.delivered
    result.connected_records = counter.connected
    result.peak_rss_mb = round(sampler.peak_rss / 1024**2, 1)
    result.cpu_s = round(sampler.cpu_s, 2)
    if result.emitted:
        result.delivered_share = round(result.delivered / result.emitted, 4)
    if result.delivered:
        result.cpu_s_per_10k = round(sampler.cpu_s / result.delivered * 10_000, 3)
        first, last = min(counter.timestamps) / 1000, max(counter.timestamps) / 1000
        result.time_to_deliver_s = round(last - started, 2)
        if last > first:
            result.steady_rate_eps = round(result.delivered / (last - first))
    if result.scenario == "steady" and counter.values:
        seen: list[float] = []
        created: list[float] = []
        settled: list[float] = []  # emitted once every stream was open
        for value, ts, arrival in zip(
            counter.values, counter.timestamps, counter.arrivals, strict=True
        ):
            emitted = _emitted_at(value)
            if emitted is not None:
                seen.append((arrival - emitted) * 1000)
                created.append(ts - emitted * 1000)
                if subscribed_at is not None and emitted >= subscribed_at:
                    settled.append(seen[-1])
        windows: dict[int, list[float]] = {}
        for value, arrival in zip(counter.values, counter.arrivals, strict=True):
            emitted = _emitted_at(value)
            if emitted is not None:
                windows.setdefault(int((emitted - started) // 5), []).append(
                    (arrival - emitted) * 1000
                )
        # where in the run the tail is: p99 per 5 s of emission time
        result.extra["latency_p99_ms_by_5s"] = {
            f"{5 * w}-{5 * w + 5}s": round(_percentile(v, 0.99), 1)
            for w, v in sorted(windows.items())
        }
        if settled:
            result.extra["latency_settled_p50_ms"] = round(_percentile(settled, 0.50), 1)
            result.extra["latency_settled_p99_ms"] = round(_percentile(settled, 0.99), 1)
            result.extra["latency_settled_samples"] = len(settled)
        if seen:
            result.latency_p50_ms = round(_percentile(seen, 0.50), 1)
            result.latency_p99_ms = round(_percentile(seen, 0.99), 1)
            result.latency_create_p50_ms = round(_percentile(created, 0.50), 1)
            result.latency_create_p99_ms = round(_percentile(created, 0.99), 1)
            result.extra["latency_samples"] = len(seen)
            result.extra["latency_mean_ms"] = round(statistics.fmean(seen), 1)


# -- the whole run --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def broker_for(bootstrap_servers: str | None) -> AsyncIterator[str]:
    """The cluster named, or a fresh embedded tansu for the scenario."""
    if bootstrap_servers:
        yield bootstrap_servers
        return
    async with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    sizes = SIZES[args.size]
    budget = args.memory_budget_gb * 1024**3
    results: list[Result] = []
    if "bridge-before" in args.contenders:
        os.environ[_BEFORE_SRC] = str(unpack(args.before, out / "before-src"))
    for scenario in args.scenarios:
        params = dict(sizes[scenario])
        streams = int(params.get("tasks", params.get("streams", params.get("live", 0))))
        async with broker_for(args.bootstrap_servers) as bootstrap_servers:
            for contender in args.contenders:
                if contender == "official" and streams * OFFICIAL_BYTES_PER_STREAM > budget:
                    need = streams * OFFICIAL_BYTES_PER_STREAM / 1024**3
                    skipped = Result(scenario, contender, params, streams=streams)
                    skipped.skipped = (
                        f"needs ~{need:.1f} GB at {streams} streams (1.5 MB each), over the "
                        f"{args.memory_budget_gb:g} GB budget"
                    )
                    results.append(skipped)
                    print(f"{scenario:7} {contender:9} skipped: {skipped.skipped}", flush=True)
                    continue
                print(f"{scenario:7} {contender:9} running ...", flush=True)
                result = await run_one(
                    scenario,
                    contender,
                    params,
                    bootstrap_servers,
                    out,
                    quiet_s=args.quiet_s,
                    timeout_s=args.timeout_s,
                    profile=args.profile,
                )
                results.append(result)
                print(f"{scenario:7} {contender:9} {brief(result)}", flush=True)
    report = {
        "size": args.size,
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "results": [asdict(r) for r in results],
    }
    from bench.report import targets

    report["targets"] = targets(report["results"], full_size=args.size == "full")
    return report


def unpack(ref: str, into: Path) -> Path:
    """The ``bridge`` package as it was at ``ref`` (``git archive``), to run as a contender."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "bridge"], cwd=REPO, check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def brief(r: Result) -> str:
    return (
        f"{r.delivered}/{r.emitted} delivered in {r.time_to_deliver_s}s, "
        f"{r.steady_rate_eps} ev/s, RSS {r.peak_rss_mb} MB, CPU {r.cpu_s}s ({r.ended_by})"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="benchmark the bridge (bench/README.md)")
    parser.add_argument("--quick", action="store_const", const="quick", dest="size")
    parser.add_argument("--size", choices=tuple(SIZES))
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"default: {','.join(SCENARIOS)}; also: {','.join(EXTRA_SCENARIOS)}",
    )
    parser.add_argument(
        "--contenders", help=f"default: {','.join(CONTENDERS)} (--quick: without bridge-solo)"
    )
    parser.add_argument("--out", type=Path, help="default: bench/results/<size>-<time>")
    parser.add_argument(
        "--before", default=BEFORE_REF, help=f"git ref of bridge-before (default {BEFORE_REF})"
    )
    parser.add_argument(
        "--bootstrap-servers",
        help="a Kafka cluster to run against (default: an embedded tansu per scenario); "
        "each run writes its own topics",
    )
    parser.add_argument("--memory-budget-gb", type=float, default=8.0)
    parser.add_argument("--quiet-s", type=float, help="default 5 (--quick: 2)")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument(
        "--profile", action="store_true", help="run each contender under py-spy (figures skewed)"
    )
    parser.set_defaults(size="full")
    args = parser.parse_args(argv)
    quick = args.size == "quick"  # under two minutes: the everyday variant
    if args.contenders is None:
        args.contenders = ",".join(
            c
            for c in CONTENDERS
            if c not in _ON_REQUEST
            and not (quick and c in ("bridge-solo", "bridge-alo", "bridge-before"))
        )
    if args.quiet_s is None:
        args.quiet_s = 2.0 if quick else 5.0
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.contenders = [c for c in args.contenders.split(",") if c]
    for name in args.scenarios:
        if name not in SCENARIOS + EXTRA_SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    for name in args.contenders:
        if name not in CONTENDERS:
            parser.error(f"unknown contender {name!r}")
    if args.out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = REPO / "bench" / "results" / f"{args.size}-{stamp}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(run(args))
    from bench.report import table, write_chart

    (args.out / "results.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print()
    print(table(report))
    if not args.no_chart:
        write_chart(report, args.out / "results.png")
    print(f"\nresults: {args.out}/results.json" + ("" if args.no_chart else " and results.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
