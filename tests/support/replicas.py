"""Bridge replicas as real processes (`python -m bridge run`), for the
scale-out tests: start, SIGTERM, SIGKILL, their JSON logs and their
``/metrics`` (each serves it on a port of its own, found in its logs)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import BridgeConfig
from bridge.emulator.server import Emulator
from support.e2e import config_env, run_bridge

SampleKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Scrape:
    """One read of a replica's ``/metrics``."""

    samples: Mapping[SampleKey, float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        return cls(
            {
                (s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
        )

    def get(self, name: str, **labels: str) -> float | None:
        """The value of ``name{labels}`` (exposed name), ``None`` if not exposed."""
        return self.samples.get((name, frozenset(labels.items())))


def replica_env(emu: Emulator, config: BridgeConfig, name: str) -> dict[str, str]:
    """Everything a replica needs, from the environment only (as in Kubernetes)."""
    del emu  # the config already points at it
    return config_env(
        config,
        XPANDER_BRIDGE_COORDINATION__INSTANCE_ID=name,
        XPANDER_BRIDGE_REPORTS__ENABLED="false",
        # /metrics on a free port (logged in "bridge started"): what the tests wait on.
        XPANDER_BRIDGE_HTTP__ENABLED="true",
        XPANDER_BRIDGE_HTTP__HOST="127.0.0.1",
        XPANDER_BRIDGE_HTTP__PORT="0",
        XPANDER_BRIDGE_LOGGING__FORMAT="json",
    )


class Replica:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self._env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Replica:
        log = self.log_path.open("ab")
        self.process = await run_bridge(self._env, stdout=asyncio.subprocess.DEVNULL, stderr=log)
        log.close()
        return self

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def terminate(self, timeout_s: float = 30) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout_s)

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            if raw.startswith(b"{"):
                lines.append(orjson.loads(raw))
        return lines

    def owned(self) -> bool:
        """The replica owns coordination partitions. An empty assignment does
        not count: under the cooperative protocol a newcomer first joins with
        none, and a test that took that for joined stopped an old replica in
        the middle of the rebalance (seen: the group then stuck, see the
        session-10 note)."""
        return any(
            line["message"] == "coordination partitions assigned" and line["partitions"] != "[]"
            for line in self.logs()
        )

    def exited(self) -> int | None:
        """The exit code once the process has ended, else ``None``."""
        return None if self.process is None else self.process.returncode

    def http_port(self) -> int | None:
        """The port of ``/metrics``, once the replica logged "bridge started"."""
        for line in self.logs():
            if line["message"] == "bridge started" and line.get("http_port"):
                return int(line["http_port"])
        return None

    async def scrape(self) -> Scrape | None:
        """The replica's ``/metrics`` now; ``None`` while it does not serve them
        (not started yet, or gone)."""
        port = self.http_port()
        if port is None or self.exited() is not None:
            return None
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.get(f"http://127.0.0.1:{port}/metrics")
        except httpx.TransportError:
            return None
        response.raise_for_status()
        return Scrape.parse(response.text)

    async def aclose(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def group_settled(replicas: Sequence[Replica], partitions: int) -> bool:
    """Every replica is ready (Kafka, its assignment, the first task listing) and
    owns at least one coordination partition, and together they own all
    ``partitions``: one assignment covering every replica, read from their
    ``xpander_bridge_ready`` and ``xpander_bridge_owned_partitions``."""
    owned = 0.0
    for replica in replicas:
        code = replica.exited()
        if code is not None:
            raise AssertionError(f"replica {replica.name} exited with code {code}")
        scrape = await replica.scrape()
        if scrape is None or scrape.get("xpander_bridge_ready") != 1:
            return False
        mine = scrape.get("xpander_bridge_owned_partitions")
        if mine is None or mine < 1:
            return False
        owned += mine
    return owned == partitions
