"""Fault tests on a real broker: a consumer killed mid-batch, a broker that forgets its log."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from bus.kafka.broker import EmbeddedBroker, free_port
from bus.kafka.clients import KafkaSettings
from bus.kafka.records import document_record
from bus.kafka.runtime import ConsumerRuntime, Output, Record, Result
from bus.kafka.topics import ensure_topics
from bus.registry import Registry
from bus.store.archive import PostgresArchive, SqliteArchive
from bus.store.blobs import BlobStore
from bus.store.documents import NewEntry
from bus.store.outbox import State
from bus.store.postgres import postgres_error
from bus.store.sqlite import sqlite_error
from bus.trust.pki import CertRole, KeyAlgorithm
from bus.wire.errors import Unavailable
from bus.wire.model import Role
from producers.document import new_document
from tests.conftest import MINISTRY, Pki
from tests.postgres import OwnPostgres
from tests.records import receipt_headers
from tests.stack import NGHE_AN, node_keys, read_topic, running_stack

pytestmark = pytest.mark.integration


def _start_archiver(
    broker: EmbeddedBroker, key: str, folder: Path, trust: Path
) -> subprocess.Popen[bytes]:
    with open(folder / "archiver.log", "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bus",
                "serve",
                "archiver",
                "--data-dir",
                str(folder),
                "--trust",
                str(trust),
                "--key",
                key,
            ],
            env=broker.client_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _count(path: Path) -> int:
    if not path.exists():
        return 0
    archive = SqliteArchive(path)
    try:
        return archive.count()
    finally:
        archive.close()


async def _until(predicate: object, seconds: float) -> None:
    for _ in range(int(seconds / 0.02)):
        if await asyncio.to_thread(predicate):  # type: ignore[arg-type]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not reached within {seconds}s")


async def test_an_archiver_killed_mid_batch_archives_each_document_exactly_once(
    broker: EmbeddedBroker, pki: Pki, tmp_path: Path
) -> None:
    settings = broker.settings()
    topic = settings.topics.deliver("nghe-an")
    await ensure_topics(
        settings, [topic, settings.topics.status, settings.topics.checkpoints], partitions=2
    )
    keys = [pki.key(MINISTRY, Role.SIGNER), pki.key(MINISTRY, Role.AGENCY)]
    docs = [new_document(MINISTRY, [NGHE_AN], f"Văn bản số {i}") for i in range(3000)]
    producer = settings.producer()
    await producer.start()
    gateway = pki.key("docbus.gateway", Role.SERVICE)
    records = [document_record(d, keys) for d in docs]
    sent = [
        await producer.send(
            topic, r, key=d.document_id.encode(), headers=receipt_headers(r, gateway)
        )
        for d, r in zip(docs, records, strict=True)
    ]
    await asyncio.gather(*sent)
    await producer.stop()

    key_path, cert_path = pki.dev.issue(
        "docbus.archiver", CertRole.SERVICE, KeyAlgorithm.ED25519, replace=True
    )
    key = f"{key_path},{cert_path}"
    db = tmp_path / "archive.sqlite"
    first = _start_archiver(broker, key, tmp_path, pki.dev.trust_dir)
    await _until(lambda: _count(db) > 0, 30)
    first.kill()  # SIGKILL: no commit, no goodbye, possibly inside a batch
    first.wait()
    stored_before = _count(db)
    assert 0 < stored_before < len(docs), "the kill should land mid-stream"
    second = _start_archiver(broker, key, tmp_path, pki.dev.trust_dir)
    try:
        await _until(lambda: _count(db) >= len(docs), 60)
        await asyncio.sleep(1)  # anything re-delivered after that must be a no-op
    finally:
        second.terminate()
        second.wait(timeout=20)
    assert second.returncode == 0  # a graceful stop on SIGTERM
    archive = SqliteArchive(db)
    entries = archive.entries()
    archive.close()
    assert len(entries) == len(docs)
    assert {e.document_id for e in entries} == {d.document_id for d in docs}
    assert not any(e.conflict for e in entries)


async def test_a_broker_that_forgets_everything_loses_nothing(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(
        broker.bootstrap, pki, registry, tmp_path, resend_after=timedelta(seconds=2)
    ) as stack:
        before = new_document(MINISTRY, [NGHE_AN], "Trước sự cố")
        await stack.publisher.publish(before)
        async with asyncio.timeout(30):
            assert (await stack.publisher.wait(before.document_id)).state is State.ARCHIVED
        await stack.stop_service("gateway")
        unanswered = [new_document(MINISTRY, [NGHE_AN], f"Trong sự cố {i}") for i in range(5)]
        for doc in unanswered:
            await stack.publisher.publish(doc)  # reaches the broker, nobody routes it
        await asyncio.to_thread(broker.restart)  # the log, offsets and groups are gone
        await stack.restart_gateway()
        async with asyncio.timeout(90):
            for doc in unanswered:
                assert (await stack.publisher.wait(doc.document_id)).state is State.ARCHIVED
        assert all(stack.publisher.outbox.get(d.document_id).attempts >= 2 for d in unanswered)  # type: ignore[union-attr]
        archived = {e.document_id for e in stack.archive.entries()}
        assert archived == {before.document_id, *(d.document_id for d in unanswered)}


class _Failing:
    """A handler whose sink fails ``times`` times with ``error`` (forever with None)."""

    stage = "sink"

    def __init__(self, error: Exception, times: int | None, out: str) -> None:
        self.error, self.times, self.out, self.calls = error, times, out, 0

    async def handle(self, records: Sequence[Record]) -> Sequence[Result]:
        self.calls += 1
        if self.times is None or self.calls <= self.times:
            raise self.error
        return [Output(self.out, r.key, r.value or b"") for r in records]


async def _put(settings: KafkaSettings, topic: str, n: int) -> None:
    producer = settings.producer()
    await producer.start()
    for i in range(n):
        await producer.send_and_wait(topic, f"record {i}".encode(), key=str(i).encode())
    await producer.stop()


@pytest.mark.parametrize(
    "error",
    [
        # Each as its adapter raises it: the driver's error classified where it is raised.
        sqlite_error(sqlite3.OperationalError("database is locked")),
        postgres_error(psycopg.OperationalError("the connection is closed")),
        postgres_error(psycopg.errors.AdminShutdown("terminating connection")),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
    ids=["sqlite-locked", "postgres-closed", "postgres-terminated", "disk-full"],
)
async def test_a_transient_failure_is_waited_out_and_never_dead_lettered(
    broker: EmbeddedBroker, error: Exception
) -> None:
    settings = broker.settings()
    await ensure_topics(settings, ["t.in", "t.out", settings.topics.rejected], partitions=1)
    await _put(settings, "t.in", 3)
    # Failing more often than the runtime's attempts: a record's fault would be rejected by
    # now, an infrastructure fault is waited out.
    handler = _Failing(error, 8, "t.out")
    runtime = ConsumerRuntime(settings, handler, "g.sink", topics=["t.in"], backoff=(0.01, 0.05))
    task = asyncio.create_task(runtime.run())
    out = await read_topic(settings, "t.out", 3, seconds=30)
    runtime.request_stop()
    await task
    assert sorted(r.value for r in out) == [b"record 0", b"record 1", b"record 2"]
    assert handler.calls > runtime.max_attempts
    assert await read_topic(settings, settings.topics.rejected, 1, seconds=2) == []


async def test_a_stop_during_a_full_disk_commits_nothing_and_loses_nothing(
    broker: EmbeddedBroker,
) -> None:
    settings = broker.settings()
    await ensure_topics(settings, ["t.in", "t.out", settings.topics.rejected], partitions=1)
    await _put(settings, "t.in", 3)
    full = _Failing(OSError(errno.ENOSPC, "No space left on device"), None, "t.out")
    runtime = ConsumerRuntime(settings, full, "g.disk", topics=["t.in"], backoff=(0.01, 0.05))
    task = asyncio.create_task(runtime.run())
    await asyncio.sleep(2)
    runtime.request_stop()
    await asyncio.wait_for(task, 10)  # the stop ends the retrying at once
    assert await read_topic(settings, settings.topics.rejected, 1, seconds=2) == []
    # The disk is freed and the service restarts: every record is still there to handle.
    working = _Failing(OSError(), 0, "t.out")
    again = ConsumerRuntime(settings, working, "g.disk", topics=["t.in"])
    task = asyncio.create_task(again.run())
    out = await read_topic(settings, "t.out", 3, seconds=30)
    again.request_stop()
    await task
    assert sorted(r.value for r in out) == [b"record 0", b"record 1", b"record 2"]


async def test_a_service_started_before_the_broker_waits_for_it() -> None:
    broker = EmbeddedBroker()  # not started yet: nothing listens on its port
    settings = broker.settings()
    runtime = ConsumerRuntime(
        settings, _Failing(OSError(), 0, "t.out"), "g.early", topics=["t.in"], backoff=(0.1, 0.5)
    )
    task = asyncio.create_task(runtime.run())
    await asyncio.sleep(2)
    assert not task.done() and not runtime.started.is_set()  # waiting, not exited
    with broker:
        await ensure_topics(settings, ["t.in", "t.out"], partitions=1)
        await _put(settings, "t.in", 2)
        out = await read_topic(settings, "t.out", 2, seconds=30)
        runtime.request_stop()
        await asyncio.wait_for(task, 20)
    assert sorted(r.value for r in out) == [b"record 0", b"record 1"]


async def test_a_stop_while_the_broker_is_down_ends_the_wait() -> None:
    runtime = ConsumerRuntime(
        EmbeddedBroker().settings(), _Failing(OSError(), 0, "t.out"), "g.none", topics=["t.in"]
    )
    task = asyncio.create_task(runtime.run())
    await asyncio.sleep(1)
    runtime.request_stop()
    await asyncio.wait_for(task, 10)
    assert not runtime.started.is_set()


async def test_an_agency_node_started_before_its_broker_serves_queues_and_sends_once_it_comes(
    pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    broker = EmbeddedBroker()  # not started yet: nothing listens on its port
    port = free_port()
    keys = node_keys(pki, MINISTRY, tmp_path / "keys")
    node = _node(broker, pki, keys, tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            await _until_async(lambda: _answers(client, "/healthz", 200), 30)
            assert (await client.get("/readyz")).status_code == 503  # up, not ready
            token = (tmp_path / "node" / "token").read_text().strip()
            client.headers["Authorization"] = f"Bearer {token}"
            posted = await client.post(
                "/v1/documents", json={"recipients": [NGHE_AN], "subject": "Trước khi có bus"}
            )
            assert posted.status_code == 202, posted.text  # durable in the outbox already
            document_id = posted.json()["document_id"]
            assert node.poll() is None, "the node waits for its broker instead of exiting"
            with broker:
                async with running_stack(broker.bootstrap, pki, registry, tmp_path / "bus"):
                    await _until_async(lambda: _answers(client, "/readyz", 200), 60)
                    await _until_async(lambda: _state(client, document_id, "ARCHIVED"), 90)
    finally:
        node.terminate()
        node.wait(30)


def _node(
    broker: EmbeddedBroker, pki: Pki, keys: Path, folder: Path, port: int
) -> subprocess.Popen[bytes]:
    with (folder / "node.log").open("ab") as log:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "bus", "serve", "agency", "--agency", MINISTRY),
                *("--keys", str(keys), "--trust", str(pki.dev.trust_dir)),
                *("--data-dir", str(folder / "node"), "--listen", f"127.0.0.1:{port}"),
            ],
            env={**broker.client_env(), "DOCBUS_BLOB_DIR": str(folder / "blobs")},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _answers(client: httpx.AsyncClient, path: str, status: int) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return (await client.get(path)).status_code == status
    return False


async def _state(client: httpx.AsyncClient, document_id: str, state: str) -> bool:
    answer = await client.get(f"/v1/documents/{document_id}")
    return bool(answer.json()["state"] == state)


async def _until_async(check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while True:
            if await check():
                return
            await asyncio.sleep(0.3)


def test_an_archive_opened_before_its_database_waits_and_carries_on_when_it_comes(
    pki: Pki, tmp_path: Path
) -> None:
    keys = [pki.key(MINISTRY, Role.SIGNER), pki.key(MINISTRY, Role.AGENCY)]
    docs = [new_document(MINISTRY, [NGHE_AN], f"Số {i}") for i in range(6)]
    entries = [
        NewEntry.of(d, document_record(d, keys), "docbus.deliver.nghe-an", datetime.now(UTC))
        for d in docs
    ]
    pg = OwnPostgres(tmp_path / "pg")  # made, not started
    archive = PostgresArchive(pg.url, BlobStore(tmp_path / "blobs"))  # no error: it waits
    try:
        with pytest.raises(Unavailable):  # transient: retried by the runtime, never rejected
            archive.store(entries[:2])
        pg.start()
        _retried(lambda: archive.store(entries[:2]))  # the schema made when it first answers
        assert pg.terminate_connections() >= 1
        archive.store(entries[2:4])  # a connection cut: replaced at once, not kept
        pg.restart()
        _retried(lambda: archive.store(entries[4:]))  # a server crashed and back
        assert archive.count() == 6 and archive.log_size() == 6
    finally:
        archive.close()
        with contextlib.suppress(BaseException):
            pg.stop("immediate")


def _retried(call: Callable[[], object], seconds: float = 90) -> None:
    """As the consumer runtime does: a transient failure is tried again until it passes."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            call()
            return
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
