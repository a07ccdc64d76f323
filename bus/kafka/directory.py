"""The directory on its topic (DESIGN §13): publishing a signed version, and reading the
newest valid one. Every version read is checked by a :class:`DirectoryReader` (signed by
the pinned operator, complete, newer than the one in force); one that is not is logged
with its reason and changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from bus.directory.model import Directory
from bus.directory.signed import DirectoryReader, Record, genuine_keys, open_directory, read_file
from bus.kafka.clients import KafkaSettings, partitions_of
from bus.trust.verifier import Verifier

log = structlog.get_logger("directory")


async def publish_directory(
    settings: KafkaSettings, records: list[tuple[bytes, bytes]], present: set[bytes]
) -> int:
    """Write a signed directory's ``records`` (parts, then the manifest) to the directory
    topic, but the parts already there (keys in ``present``); returns how many written."""
    producer = settings.producer()
    await producer.start()
    try:
        missing = [(key, value) for key, value in records if key not in present]
        for key, value in missing:
            await producer.send_and_wait(settings.topics.directory, value, key=key)
        return len(missing)
    finally:
        await producer.stop()


async def _assigned(settings: KafkaSettings) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A consumer of the whole directory topic from its start (no group: each reader reads
    everything), and its partitions (none when the topic does not exist)."""
    consumer = AIOKafkaConsumer(**settings.common(), enable_auto_commit=False)
    try:
        await consumer.start()
        topic = settings.topics.directory
        parts = (await partitions_of(consumer, [topic])).get(topic, [])
        if parts:
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
    except BaseException:
        await consumer.stop()  # never left unclosed
        raise
    return consumer, parts


async def _take_to_end(
    consumer: AIOKafkaConsumer, parts: list[TopicPartition], reader: DirectoryReader
) -> set[bytes]:
    """Hand ``reader`` each batch from the consumer's position to each partition's end as
    of now (never the whole topic at once); the genuine keys read."""
    ends = await consumer.end_offsets(parts) if parts else {}
    keys: set[bytes] = set()
    while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
        batch = await consumer.getmany(*parts, timeout_ms=500)
        records: list[Record] = [(r.key, r.value) for rs in batch.values() for r in rs]
        reader.take(records)
        keys |= genuine_keys(records)
    return keys


async def read_directory(settings: KafkaSettings, reader: DirectoryReader) -> set[bytes]:
    """Hand ``reader`` the whole directory topic, from its start to its end as of now (then
    ``reader.settle()`` says what is in force); returns the keys of the records there whose
    bytes are what their keys name (what a publisher need not write again)."""
    consumer, parts = await _assigned(settings)
    try:
        return await _take_to_end(consumer, parts, reader)
    finally:
        await consumer.stop()


async def load_directory(
    settings: KafkaSettings, verifier: Verifier, fallback: Path | None = None
) -> Directory | None:
    """The newest valid directory on the topic; else the one in the signed file
    ``fallback`` (for offline use); else None."""
    reader = DirectoryReader(verifier)
    await read_directory(settings, reader)
    found = reader.settle()
    if found is None and fallback is not None:
        log.info("no valid directory on the topic: using the file", file=str(fallback))
        found = await asyncio.to_thread(open_file, fallback, verifier)
    return found


def open_file(path: Path, verifier: Verifier) -> Directory:
    """The directory in a signed file; DirectoryError says why there is none."""
    return open_directory(read_file(path.read_bytes()), verifier)


class DirectoryFollower:
    """Keeps a service on the newest directory (DESIGN §13): loads it at start, then reads
    what the topic gains and applies each newer genuine version within ``period``, without
    a restart. ``apply`` takes each version applied (its registry, its certificates)."""

    def __init__(
        self,
        settings: KafkaSettings,
        verifier: Verifier,
        apply: Callable[[Directory], None],
        fallback: Path | None = None,
        period: float = 15.0,
    ) -> None:
        self.settings = settings
        self.verifier = verifier
        self.apply = apply
        self.fallback = fallback
        self.period = period
        self.directory = DirectoryReader(verifier)
        self._reread: bytes | None = None
        self._reader: tuple[AIOKafkaConsumer, list[TopicPartition]] | None = None

    async def start(self) -> None:
        """The newest directory on the topic (its history: older versions are no
        refusals), else the signed file, applied before the service handles its first
        record; with neither, the service keeps the registry it has."""
        found = None
        try:
            self._reader = await _assigned(self.settings)
            await _take_to_end(*self._reader, self.directory)
            found = self.directory.settle()
        except (KafkaError, OSError) as exc:
            log.warning("directory topic not read: following it once it answers", error=str(exc))
            await self._close()
        if found is None and self.fallback is not None:
            records = read_file(await asyncio.to_thread(self.fallback.read_bytes))
            found = self.directory.feed(records)
        if found is not None:
            self._use(found)

    @property
    def current(self) -> Directory | None:
        return self.directory.current

    def _use(self, found: Directory) -> None:
        self.apply(found)
        log.info("directory applied", name=found.name, version=found.version)

    async def run(self) -> None:
        """Follow the topic until cancelled: each version it gains is checked against the
        one in force (an older or forged one is logged and changes nothing)."""
        try:
            while True:
                try:
                    await self._follow()
                except (KafkaError, OSError) as exc:
                    log.warning("directory topic unavailable; retrying", error=str(exc))
                    await self._close()
                    await asyncio.sleep(self.period)
        finally:
            await self._close()

    async def _follow(self) -> None:
        if self._reader is None:  # from the start again: what is in force is skipped
            self._reader = await _assigned(self.settings)
        consumer, parts = self._reader
        if not parts:
            await asyncio.sleep(self.period)
            await self._close()  # the topic may exist by now
            return
        batch = await consumer.getmany(*parts, timeout_ms=int(self.period * 1000))
        found = self.directory.feed([(r.key, r.value) for rs in batch.values() for r in rs])
        waiting = self.directory.waiting
        if not batch and waiting is not None and waiting.key != self._reread:
            # A version still lacks a part: read the topic again from its start, once (a
            # part an earlier version had, dropped here since, is written only once).
            self._reread = waiting.key
            await self._close()
        if found is not None:
            self._use(found)

    async def _close(self) -> None:
        if self._reader is not None:
            await self._reader[0].stop()
            self._reader = None


async def following(follower: DirectoryFollower, service: Awaitable[None]) -> None:
    """Run ``service`` on the newest directory, following the topic while it runs."""
    await follower.start()
    task = asyncio.create_task(follower.run())
    try:
        await service
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
