"""Chaos (issue 20): documents through two agency nodes, a gateway and two archivers on a
PostgreSQL of the test's own, while a driver, at moments drawn from a fixed seed, SIGKILLs
each service and starts it again, cuts every database connection and restarts PostgreSQL.

At the end every document is ARCHIVED exactly once, its receipt proven at its sender,
nothing good lies in ``docbus.rejected``, a witness reading the whole checkpoint topic
finds no rollback nor split view, and verify-archive is clean. The broker is the embedded
one and is not restarted: it would come back empty, which is data loss, not a fault.
``DOCBUS_CHAOS_DOCUMENTS`` raises the count (5,000 and more as a benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bus.kafka.broker import EmbeddedBroker, free_port
from bus.kafka.topics import ensure_topics
from bus.store.archive import PostgresArchive
from bus.store.blobs import BlobStore
from bus.trust.pki import CertRole, KeyAlgorithm
from tests.conftest import MINISTRY, Pki
from tests.postgres import OwnPostgres, own_postgres
from tests.stack import NGHE_AN, node_keys, read_topic

pytestmark = pytest.mark.integration

SEED = 20
DOCUMENTS = int(os.environ.get("DOCBUS_CHAOS_DOCUMENTS", "1000"))
DOCBUS = [sys.executable, "-m", "bus"]


@dataclass
class Service:
    """A docbus process the driver may kill and start again."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    kills: int = 0

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*DOCBUS, *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, f"{self.name} died by itself: {self.tail()}"
        self.process.kill()  # SIGKILL: no commit, no flush, no goodbye
        self.process.wait()
        self.kills += 1

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.terminate()
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def tail(self) -> str:
        return self.log.read_text("utf-8", "replace")[-3000:]


@dataclass
class Node:
    """An agency node: its service, its API and the documents it took (202)."""

    agency: str
    to: str
    service: Service
    port: int
    token: Path
    accepted: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token.read_text().strip()}"}


def _service_key(pki: Pki, name: str) -> str:
    key, cert = pki.dev.issue(name, CertRole.SERVICE, KeyAlgorithm.ED25519, replace=True)
    return f"{key},{cert}"


@dataclass
class Bus:
    """Everything the driver runs, and how to reach it."""

    pg: OwnPostgres
    gateway: Service
    archivers: list[Service]
    nodes: list[Node]

    @property
    def services(self) -> list[Service]:
        return [self.gateway, *self.archivers, *(n.service for n in self.nodes)]


def _bus(broker: EmbeddedBroker, pki: Pki, pg: OwnPostgres, folder: Path) -> Bus:
    trust = str(pki.dev.trust_dir)
    blobs = folder / "blobs"
    env = {**broker.client_env(), "DOCBUS_BLOB_DIR": str(blobs), "DOCBUS_TRUST_RELOAD_SECONDS": "5"}
    archiver_key = _service_key(pki, "docbus.archiver")  # one log: one key for both
    gateway = Service(
        "gateway",
        ["serve", "gateway", "--trust", trust, "--key", _service_key(pki, "docbus.gateway")],
        env,
        folder / "gateway.log",
    )
    archivers = [
        Service(
            f"archiver-{i}",
            [
                *("serve", "archiver", "--data-dir", str(folder / f"archiver-{i}")),
                *("--database", pg.url, "--trust", trust, "--key", archiver_key),
            ],
            env,
            folder / f"archiver-{i}.log",
        )
        for i in (1, 2)
    ]
    nodes = []
    for agency, to in ((MINISTRY, NGHE_AN), (NGHE_AN, MINISTRY)):
        port, data = free_port(), folder / f"node-{agency}"
        keys = node_keys(pki, agency, folder / f"keys-{agency}")
        args = ["serve", "agency", "--agency", agency, "--keys", str(keys), "--trust", trust]
        args += ["--data-dir", str(data), "--listen", f"127.0.0.1:{port}"]
        service = Service(f"node-{agency}", args, env, folder / f"node-{agency}.log")
        nodes.append(Node(agency, to, service, port, data / "token"))
    return Bus(pg, gateway, archivers, nodes)


async def _post(node: Node, client: httpx.AsyncClient, i: int) -> None:
    """One document; a node killed meanwhile answers nothing (then it may or may not have
    taken it: only what was answered 202 is counted, and nothing may be archived twice)."""
    body = {"recipients": [node.to], "subject": f"Văn bản hỗn loạn số {i}"}
    with contextlib.suppress(httpx.TransportError):
        answer = await client.post(f"{node.url}/v1/documents", json=body, headers=node.headers())
        if answer.status_code == 202:
            node.accepted.append(answer.json()["document_id"])


async def _send(bus: Bus, count: int) -> None:
    """``count`` documents, half from each node, a few at a time, retried while its node
    is down."""
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(0, count, 10):
            for node in bus.nodes:
                before = len(node.accepted)
                while len(node.accepted) == before:
                    await asyncio.gather(*(_post(node, client, i + j) for j in range(5)))
                    if len(node.accepted) == before:
                        await asyncio.sleep(0.5)


async def _drive(bus: Bus, sending: asyncio.Task[None], rng: random.Random) -> list[str]:
    """Faults at random moments, each kind in a seeded order, until the documents are sent
    and every kind has been done at least once; what was done, in order."""
    faults: dict[str, Callable[[], None]] = {
        **{f"kill {s.name}": _restart(s) for s in bus.services},
        "terminate database connections": lambda: bus.pg.terminate_connections() and None,
        "restart postgresql": bus.pg.restart,
    }
    done: list[str] = []
    while not sending.done() or len(set(done)) < len(faults):
        schedule = sorted(faults)
        rng.shuffle(schedule)
        for name in schedule:
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            await asyncio.to_thread(faults[name])
            done.append(name)
    return done


def _restart(service: Service) -> Callable[[], None]:
    def again() -> None:
        service.kill()
        service.start()

    return again


async def _archived(node: Node, seconds: float) -> dict[str, str]:
    """Wait until every document the node took is ARCHIVED there; each one's state."""
    states: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=30) as client, asyncio.timeout(seconds):
        while True:
            for document_id in node.accepted:
                if states.get(document_id) == "ARCHIVED":
                    continue
                with contextlib.suppress(httpx.TransportError):
                    answer = await client.get(
                        f"{node.url}/v1/documents/{document_id}", headers=node.headers()
                    )
                    states[document_id] = answer.json()["state"]
            if all(states.get(d) == "ARCHIVED" for d in node.accepted):
                return states
            await asyncio.sleep(1)


async def _ready(bus: Bus) -> None:
    async with httpx.AsyncClient(timeout=5) as client, asyncio.timeout(90):
        for node in bus.nodes:
            while True:
                assert node.service.process is not None
                assert node.service.process.poll() is None, node.service.tail()
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{node.url}/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.3)


async def test_every_part_killed_cut_or_restarted_at_random_loses_and_duplicates_nothing(
    broker: EmbeddedBroker, pki: Pki, tmp_path: Path
) -> None:
    settings = broker.settings()
    topics = settings.topics
    await ensure_topics(
        settings,
        [
            topics.submitted,
            topics.status,
            topics.rejected,
            topics.checkpoints,
            topics.deliver("central"),
            topics.deliver("nghe-an"),
        ],
        partitions=2,
    )
    with own_postgres(tmp_path / "pg") as pg:
        bus = _bus(broker, pki, pg, tmp_path)
        for service in bus.services:
            service.start()
        try:
            await _ready(bus)
            sending = asyncio.create_task(_send(bus, DOCUMENTS))
            await _drive(bus, sending, random.Random(SEED))
            await sending
            for node in bus.nodes:
                await _archived(node, 240)
        finally:
            codes = {s.name: s.stop() for s in bus.services}
        logs = {s.name: s.tail() for s in bus.services}
        # A graceful stop on SIGTERM; uvicorn, serving a node's API, re-raises the signal
        # once it has shut down (so a node ends "killed by SIGTERM", after its cleanup).
        graceful = {
            s.name: (0, -signal.SIGTERM) if s.name.startswith("node") else (0,)
            for s in bus.services
        }
        assert all(codes[name] in graceful[name] for name in codes), (codes, logs)
        _archived_once(pg, bus, tmp_path)
        assert await read_topic(settings, topics.rejected, 1, seconds=3) == [], "all were good"
        _witness_and_audit(broker, pki, tmp_path, pg.url)


def _archived_once(pg: OwnPostgres, bus: Bus, folder: Path) -> None:
    with PostgresArchive(pg.url, BlobStore(folder / "blobs")) as archive:
        entries = archive.entries()
    accepted = {d for n in bus.nodes for d in n.accepted}
    assert len(accepted) >= DOCUMENTS // 2
    ids = [e.document_id for e in entries]
    assert len(ids) == len(set(ids)), "a document archived twice"
    assert accepted <= set(ids)
    assert not any(e.conflict for e in entries)


def _witness_and_audit(broker: EmbeddedBroker, pki: Pki, folder: Path, database: str) -> None:
    """A witness that reads the whole checkpoint topic sees no rollback nor split view, and
    verify-archive finds the archive clean against the topic's checkpoints."""
    trust = ["--trust", str(pki.dev.trust_dir)]
    for args in (
        [
            *("audit", "witness", "--once", "--data-dir", str(folder / "witness"), *trust),
            *("--key", _service_key(pki, "docbus.witness")),
        ],
        ["audit", "verify-archive", "--database", database, "--witnesses", "0", *trust],
    ):
        done = subprocess.run(
            [*DOCBUS, *args], env=broker.client_env(), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, (args[:2], done.stdout[-3000:], done.stderr[-3000:])
