"""Fault tests on a real broker: a consumer killed mid-batch, a broker that forgets its log."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bus.kafka.broker import EmbeddedBroker
from bus.kafka.records import document_record
from bus.kafka.topics import ensure_topics
from bus.registry import Registry
from bus.store.archive import Archive
from bus.trust.pki import CertRole, KeyAlgorithm
from bus.wire.model import Role
from producers.document import new_document
from producers.outbox import State
from tests.conftest import MINISTRY, Pki
from tests.records import receipt_headers
from tests.stack import NGHE_AN, running_stack

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
    archive = Archive(path)
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
    archive = Archive(db)
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
