"""Running the bridge as a process: logging, signals, exit codes.

SIGTERM and SIGINT start the shutdown (stop reading, drain, flush); a second
signal is ignored rather than cutting the drain short, because Kubernetes
sends SIGKILL itself when the grace period is over.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from bridge.app import Bridge
from bridge.config import BridgeConfig
from bridge.observability.logging import configure_logging

__all__ = ["SHUTDOWN_MARGIN_S", "run_bridge"]

log = logging.getLogger("bridge")

#: Past ``pipeline.shutdown_timeout_s``, the most the final steps may take.
SHUTDOWN_MARGIN_S = 5.0


async def run_bridge(config: BridgeConfig, *, install_signal_handlers: bool = True) -> int:
    """Run until a signal; return the process exit code."""
    configure_logging(config.logging.level, config.logging.format)
    bridge = Bridge(config)
    loop = asyncio.get_running_loop()
    if install_signal_handlers:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _on_signal, bridge, signum)
    start = loop.create_task(bridge.start())
    stop = loop.create_task(bridge.wait())
    await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
    if not start.done():
        # Stopped while still connecting (e.g. Kafka never came up).
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
    elif start.exception() is not None:
        stop.cancel()
        await bridge.shutdown()
        raise start.exception()  # type: ignore[misc]
    else:
        await stop
    # The hard bound: whatever hangs (Kafka unreachable, a listing that never
    # answers, a stream that never closes), the process exits in time, before
    # Kubernetes' SIGKILL, with the log saying what was left undone.
    limit = config.pipeline.shutdown_timeout_s + SHUTDOWN_MARGIN_S
    try:
        async with asyncio.timeout(limit):
            report = await bridge.shutdown()
    except TimeoutError:
        log.error("shutdown passed its deadline; exiting anyway", extra={"seconds": limit})
        return 1
    return 0 if report.clean else 1


def _on_signal(bridge: Bridge, signum: int) -> None:
    log.info("signal received; draining", extra={"signal": signal.Signals(signum).name})
    bridge.request_stop()
