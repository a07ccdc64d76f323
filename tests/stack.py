"""A whole docbus stack in one event loop, on a real embedded broker, for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from bus.kafka.broker import EMBEDDED_SESSION_TIMEOUT_MS
from bus.kafka.clients import KafkaSettings
from bus.kafka.publisher import Publisher
from bus.kafka.runtime import ConsumerRuntime
from bus.kafka.topics import all_topics, ensure_topics
from bus.registry import Registry
from bus.store.archive import Archive, SqliteArchive
from bus.store.blobs import BlobStore
from bus.store.outbox import Outbox
from bus.trust.pki import KeyAlgorithm
from bus.trust.sealing import EncryptionKey
from bus.trust.signing import SigningKey
from bus.trust.verifier import Policy, Verifier
from bus.wire.model import Role
from consumers.archiver import Archiver
from consumers.gateway import Gateway
from consumers.inbox import Inbox
from tests.conftest import MINISTRY, Pki

RELOAD = timedelta(seconds=1)
NGHE_AN = "000.00.00.H41"
BAC_NINH = "000.00.00.H06"
BAC_GIANG = "000.00.00.H04"  # merged into Bắc Ninh on 2025-07-01
GIA_LAI = "000.00.00.H21"


@dataclass
class Stack:
    settings: KafkaSettings
    pki: Pki
    registry: Registry
    folder: Path
    archive: Archive
    publisher: Publisher
    ministry: list[SigningKey]
    runtimes: dict[str, ConsumerRuntime] = field(default_factory=dict)
    archiver_key: SigningKey | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def verifier(self) -> Verifier:
        """A service's verifier; it reads the trust folder again every second (a real
        service: every ten), so a revocation reaches the running services."""
        return Verifier(self.pki.trust, Policy(), self.registry, reload_every=RELOAD)

    @property
    def blobs(self) -> BlobStore:
        """The bus's blob store, shared by the publisher and every service."""
        return BlobStore(self.folder / "bus-blobs")

    def inbox_folder(self, agency: str) -> Path:
        return self.folder / "inbox" / agency

    def start_service(self, name: str, runtime: ConsumerRuntime) -> None:
        self.runtimes[name] = runtime
        self.tasks.append(asyncio.create_task(runtime.run()))

    async def started(self) -> None:
        """Wait until every service consumes (or one failed)."""
        all_started = asyncio.gather(*(r.started.wait() for r in self.runtimes.values()))
        await asyncio.wait([all_started, *self.tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in self.tasks:
            if task.done():
                task.result()

    async def stop_service(self, name: str) -> None:
        runtime = self.runtimes.pop(name)
        runtime.request_stop()
        await asyncio.sleep(0.5)

    async def restart_gateway(self) -> None:
        start_gateway(self)
        await self.started()


def start_gateway(stack: Stack) -> None:
    s, topics = stack.settings, stack.settings.topics
    gateway = Gateway(
        stack.verifier(), stack.registry, stack.pki.key("docbus.gateway", Role.SERVICE), topics
    )
    stack.start_service(
        "gateway",
        ConsumerRuntime(s, gateway, "docbus.gateway", topics=[topics.submitted], keep=stack.blobs),
    )


def start_services(stack: Stack) -> None:
    s, pki, topics = stack.settings, stack.pki, stack.settings.topics
    archiver_key = pki.key("docbus.archiver", Role.SERVICE)
    stack.archiver_key = archiver_key
    start_gateway(stack)
    stack.start_service(
        "archiver",
        ConsumerRuntime(
            s,
            Archiver(stack.archive, archiver_key, topics, stack.verifier(), stack.blobs),
            "docbus.archiver",
            pattern=topics.deliver_pattern,
            keep=stack.blobs,
        ),
    )
    for agency in (NGHE_AN, BAC_NINH):
        decrypt = pki.dev.root / "agencies" / agency / "encryption.key.pem"
        inbox = Inbox(
            agency,
            stack.registry,
            stack.verifier(),
            pki.key(agency, Role.AGENCY),
            stack.inbox_folder(agency),
            topics,
            stack.blobs,
            EncryptionKey.from_pem(decrypt.read_bytes()) if decrypt.exists() else None,
        )
        stack.start_service(
            f"inbox-{agency}",
            ConsumerRuntime(
                s, inbox, f"docbus.inbox.{agency}", topics=[inbox.topic], keep=stack.blobs
            ),
        )


@contextlib.asynccontextmanager
async def running_stack(
    bootstrap: str,
    pki: Pki,
    registry: Registry,
    folder: Path,
    services: bool = True,
    resend_after: timedelta = timedelta(seconds=30),
    partitions: int = 2,
    settings: KafkaSettings | None = None,
) -> AsyncIterator[Stack]:
    settings = settings or KafkaSettings(bootstrap, session_timeout_ms=EMBEDDED_SESSION_TIMEOUT_MS)
    await ensure_topics(settings, all_topics(settings.topics, registry), partitions=partitions)
    ministry = [
        pki.key(MINISTRY, Role.SIGNER),
        pki.key(MINISTRY, Role.AGENCY, KeyAlgorithm.ED25519),
    ]
    archive = SqliteArchive(folder / "archive.sqlite")
    outbox = Outbox(folder / "outbox.sqlite")
    verifier = Verifier(pki.trust, Policy(), registry)
    publisher = Publisher(
        settings,
        outbox,
        ministry,
        verifier,
        resend_after=resend_after,
        blobs=BlobStore(folder / "bus-blobs"),
    )
    stack = Stack(settings, pki, registry, folder, archive, publisher, ministry)
    if services:
        start_services(stack)
    await asyncio.gather(publisher.start(), stack.started())
    try:
        yield stack
    finally:
        await publisher.stop()
        for runtime in stack.runtimes.values():
            runtime.request_stop()
        await asyncio.wait_for(asyncio.gather(*stack.tasks, return_exceptions=True), 30)
        archive.close()
        outbox.close()


async def read_topic(
    settings: KafkaSettings, topic: str, until: int, seconds: float = 20.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from the start (no group), until ``until`` came or time ran out."""
    consumer = AIOKafkaConsumer(
        topic,
        **settings.common(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(seconds):
            while len(found) < until:
                batch = await consumer.getmany(timeout_ms=200)
                for part in batch.values():
                    found.extend(part)
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return found


async def file_appears(path: Path, seconds: float = 20.0) -> None:
    """Poll until ``path`` exists (written by a service in this or another process)."""
    for _ in range(int(seconds / 0.05)):
        if await asyncio.to_thread(path.exists):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {seconds}s")


def node_keys(pki: Pki, agency: str, folder: Path) -> Path:
    """The key folder an agency node is started with (``docbus pki issue`` writes the same)."""
    folder.mkdir(parents=True)
    for role in (Role.SIGNER, Role.AGENCY):
        pki.key(agency, role)
        for kind in ("key", "cert"):
            name = f"{role.value.lower()}.{kind}.pem"
            (folder / name).write_bytes((pki.dev.root / "agencies" / agency / name).read_bytes())
    return folder
