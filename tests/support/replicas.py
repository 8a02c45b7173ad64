"""Bridge replicas as real processes (`python -m bridge run`), for the
scale-out tests: start, SIGTERM, SIGKILL, and their JSON logs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

from bridge.config import BridgeConfig
from bridge.emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]


def replica_env(emu: Emulator, config: BridgeConfig, name: str) -> dict[str, str]:
    """Everything a replica needs, from the environment only (as in Kubernetes)."""
    c = config
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XPANDER", "KAFKA"))}
    env.update(
        {
            "XPANDER_BASE_URL": emu.base_url,
            "XPANDER_API_KEY": emu.api_key,
            "XPANDER_ORGANIZATION_ID": emu.organization_id,
            "XPANDER_BRIDGE_AGENT_IDS": ",".join(c.discovery.agent_ids),
            "KAFKA_BOOTSTRAP_SERVERS": ",".join(c.kafka.bootstrap_servers),
            "XPANDER_BRIDGE_KAFKA__ENABLE_IDEMPOTENCE": str(c.kafka.enable_idempotence).lower(),
            "XPANDER_BRIDGE_KAFKA__LINGER_MS": str(c.kafka.linger_ms),
            "XPANDER_BRIDGE_TOPICS__EVENTS": c.topics.events,
            "XPANDER_BRIDGE_TOPICS__STATE": c.topics.state,
            "XPANDER_BRIDGE_TOPICS__DLQ": c.topics.dlq,
            "XPANDER_BRIDGE_TOPICS__PARTITIONS": str(c.topics.partitions),
            "XPANDER_BRIDGE_DISCOVERY__INTERVAL_S": str(c.discovery.interval_s),
            "XPANDER_BRIDGE_DISCOVERY__POLL_INTERVAL_S": str(c.discovery.poll_interval_s),
            "XPANDER_BRIDGE_STREAMS__RECONNECT_INITIAL_S": str(c.streams.reconnect_initial_s),
            "XPANDER_BRIDGE_STREAMS__RECONNECT_MAX_S": str(c.streams.reconnect_max_s),
            "XPANDER_BRIDGE_STREAMS__RESYNC_GRACE_S": str(c.streams.resync_grace_s),
            "XPANDER_BRIDGE_REPORTS__ENABLED": "false",
            "XPANDER_BRIDGE_HTTP__ENABLED": "false",
            "XPANDER_BRIDGE_LOGGING__FORMAT": "json",
            "XPANDER_BRIDGE_COORDINATION__INSTANCE_ID": name,
            "XPANDER_BRIDGE_COORDINATION__CHECKPOINT_INTERVAL_S": str(
                c.coordination.checkpoint_interval_s
            ),
            "XPANDER_BRIDGE_COORDINATION__TASKS_TOPIC": c.coordination.tasks_topic,
            "XPANDER_BRIDGE_COORDINATION__CHECKPOINTS_TOPIC": c.coordination.checkpoints_topic,
            "XPANDER_BRIDGE_COORDINATION__GROUP_ID": c.coordination.group_id,
            "XPANDER_BRIDGE_COORDINATION__PARTITIONS": str(c.coordination.partitions),
            "XPANDER_BRIDGE_COORDINATION__SESSION_TIMEOUT_MS": str(
                c.coordination.session_timeout_ms
            ),
            "XPANDER_BRIDGE_COORDINATION__HEARTBEAT_INTERVAL_MS": str(
                c.coordination.heartbeat_interval_ms
            ),
        }
    )
    return env


class Replica:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self._env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Replica:
        log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "run",
            env=self._env,
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
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
        return any(line["message"] == "coordination partitions assigned" for line in self.logs())

    async def aclose(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
