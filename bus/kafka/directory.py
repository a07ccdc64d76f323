"""The directory on its topic (DESIGN §13): publishing a signed version, and reading the
newest valid one. Every version read is checked (signed by the pinned operator, newer than
the one in force); one that is not is logged with its reason and changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.directory.model import Directory, DirectoryError
from bus.directory.signed import forward, open_directory
from bus.kafka.clients import KafkaSettings
from bus.trust.verifier import Verifier

log = structlog.get_logger("directory")


async def publish_directory(settings: KafkaSettings, record: bytes, directory: Directory) -> None:
    """Write ``record`` (``directory``, signed) to the directory topic under its key."""
    producer = settings.producer()
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.directory, record, key=directory.key)
    finally:
        await producer.stop()


async def directory_records(settings: KafkaSettings) -> list[bytes]:
    """Every record on the directory topic, from its start to its end as of now."""
    consumer = AIOKafkaConsumer(**settings.common(), enable_auto_commit=False)
    await consumer.start()
    try:
        topic = settings.topics.directory
        await consumer.topics()  # metadata, so that its partitions are known
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not parts:
            return []
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        records: list[bytes] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(*parts, timeout_ms=500)
            records += [r.value for rs in batch.values() for r in rs if r.value is not None]
        return records
    finally:
        await consumer.stop()


def newest(
    records: list[bytes], verifier: Verifier, current: Directory | None = None
) -> Directory | None:
    """The newest valid directory among ``records`` if it may replace ``current``, else None.

    A record that does not verify is logged and skipped; so is one that would take the
    directory back (older than, or another than, the one in force). Older genuine versions
    are the topic's history, not refusals, when nothing is in force yet."""
    valid: list[Directory] = []
    for record in records:
        try:
            valid.append(open_directory(record, verifier))
        except DirectoryError as exc:
            log.warning("directory refused", reason=str(exc))
    found: Directory | None = None
    for candidate in sorted(valid, key=lambda d: d.version):
        if current is not None and candidate.digest == current.digest:
            continue  # the one in force, read again
        try:
            forward(current, candidate)
        except DirectoryError as exc:
            log.warning("directory refused", reason=str(exc), version=candidate.version)
            continue
        found = candidate
    return found


async def load_directory(
    settings: KafkaSettings, verifier: Verifier, fallback: Path | None = None
) -> Directory | None:
    """The newest valid directory on the topic; else the one in the signed file
    ``fallback`` (for offline use); else None."""
    found = newest(await directory_records(settings), verifier)
    if found is None and fallback is not None:
        log.info("no valid directory on the topic: using the file", file=str(fallback))
        record = await asyncio.to_thread(fallback.read_bytes)
        found = open_directory(record, verifier)
    return found
