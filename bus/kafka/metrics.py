"""What every docbus service tells Prometheus (DESIGN §10), and its health endpoints.

The metric families live here, once, in prometheus_client's default registry; the consumer
runtime counts what it reads, writes and rejects, and measures its lag from the committed
and end offsets; services add their own gauges (checkpoint age, outbox pending). One small
ASGI app serves ``/metrics``, ``/healthz`` and ``/readyz`` on ``--listen HOST:PORT``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import uvicorn
from prometheus_client import Counter, Gauge, Histogram, make_asgi_app
from starlette.types import Receive, Scope, Send

from bus.wire.errors import Misconfigured

RECORDS_IN = Counter(
    "docbus_records_in", "Records a service read from a topic.", ["stage", "topic"]
)
RECORDS_OUT = Counter(
    "docbus_records_out", "Records a service published to a topic.", ["stage", "topic"]
)
REJECTED = Counter(
    "docbus_rejected", "Records sent to the rejected topic, by reason code.", ["stage", "reason"]
)
RECORD_AGE = Histogram(
    "docbus_stage_latency_seconds",
    "From a record's broker timestamp to the end of its handling, per stage.",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LAG = Gauge(
    "docbus_consumer_lag",
    "Records not yet committed by the service's group: end offset minus committed offset.",
    ["stage", "topic", "partition"],
)
BROKER_UP = Gauge("docbus_broker_up", "1 while the broker answered the last check.", ["stage"])
CHECKPOINT_AGE = Gauge(
    "docbus_checkpoint_age_seconds", "Seconds since the archiver signed its latest checkpoint."
)
OUTBOX_PENDING = Gauge("docbus_outbox_pending", "Records sent and not yet answered.")
OUTBOX_OLDEST = Gauge(
    "docbus_outbox_oldest_pending_seconds", "Age of the oldest record not yet answered."
)

#: A service is not ready once the broker has not answered for this long.
STALE_SECONDS = 15.0


class Readiness:
    """Whether a service can do its work: every part it names answers (the broker as its
    runtimes last saw it, its database, its keys)."""

    def __init__(self) -> None:
        self._checks: list[tuple[str, Callable[[], bool]]] = []

    def add(self, name: str, check: Callable[[], bool]) -> None:
        self._checks.append((name, check))

    def report(self) -> dict[str, bool]:
        out = {}
        for name, check in self._checks:
            try:
                out[name] = bool(check())
            except Exception:  # a check that fails is a part that does not answer
                out[name] = False
        return out


def broker_fresh(seen: Callable[[], float | None]) -> Callable[[], bool]:
    """A readiness check: the broker answered within :data:`STALE_SECONDS`."""

    def check() -> bool:
        last = seen()
        return last is not None and time.monotonic() - last < STALE_SECONDS

    return check


class OpsApp:
    """``/metrics`` (Prometheus), ``/healthz`` (alive) and ``/readyz`` (200 or 503)."""

    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness
        self.metrics = make_asgi_app()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            await self.metrics(scope, receive, send)
            return
        if path == "/healthz":
            await _json(send, 200, b'{"status":"ok"}')
            return
        if path == "/readyz":
            parts = self.readiness.report()
            ready = all(parts.values())
            body = ",".join(f'"{k}":{"true" if v else "false"}' for k, v in parts.items())
            await _json(
                send, 200 if ready else 503, f'{{"ready":{str(ready).lower()},{body}}}'.encode()
            )
            return
        await _json(send, 404, b'{"status":"not found"}')


async def _json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Beside(uvicorn.Server):
    """A server that runs beside a service: the service's own handlers keep SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def ops_server(listen: str, readiness: Readiness) -> uvicorn.Server:
    """The server of the ops endpoints on ``HOST:PORT``, to run beside a service's loop."""
    host, _, port = parse_listen(listen).rpartition(":")
    config = uvicorn.Config(
        OpsApp(readiness), host=host, port=int(port), log_config=None, access_log=False
    )
    return _Beside(config)


def parse_listen(value: str) -> str:
    """``HOST:PORT`` as given; ValueError naming what is wrong."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Misconfigured(f"{value!r} is not HOST:PORT")
    return value


def count_outputs(stage: str, topics: Sequence[str], rejected: Sequence[Any]) -> None:
    """Count a batch's published records and its rejections."""
    for topic in topics:
        RECORDS_OUT.labels(stage, topic).inc()
    for reason in rejected:
        REJECTED.labels(stage, str(reason)).inc()
