"""``replay``: re-read topics over a time range without a consumer group and check each
event against the archive and its latest signed checkpoint."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.audit.report import Finding, Report, checkpoint_seen
from bus.kafka.clients import KafkaSettings, partitions_of
from bus.kafka.runtime import Record
from bus.store.archive import Archive
from bus.tlog.checkpoint import Checkpoint
from bus.tlog.merkle import leaf_hash, verify_inclusion
from bus.trust.verifier import Rejected, Verifier
from bus.wire.errors import DocbusError, Reason
from bus.wire.headers import RECEIPT, header, record_time
from bus.wire.limits import MAX_MESSAGE_BYTES
from bus.wire.model import Document, Status


async def read_topics(
    settings: KafkaSettings, topics: Sequence[str], start: datetime | None, end: datetime | None
) -> AsyncIterator[Record]:
    """Every record of ``topics`` with a timestamp in [start, end], read without a group."""
    consumer = AIOKafkaConsumer(
        **settings.common(),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
    )
    await consumer.start()
    try:
        known = await partitions_of(consumer, topics)
        missing = [t for t in topics if t not in known]
        if missing:
            raise DocbusError(Reason.POLICY, f"no topic {', '.join(missing)}")
        tps = [tp for t in topics for tp in known[t]]
        consumer.assign(tps)
        if start is None:
            await consumer.seek_to_beginning(*tps)
        else:
            found = await consumer.offsets_for_times(
                {tp: int(start.timestamp() * 1000) for tp in tps}
            )
            for tp in tps:
                at = found.get(tp)
                if at is None:
                    await consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, at.offset)
        first = 0 if start is None else int(start.timestamp() * 1000)
        limit = None if end is None else int(end.timestamp() * 1000)
        # The end is each partition's high watermark from the fetch responses: Tansu answers
        # a ListOffsets(latest) with the last batch's base offset + 1, too early to trust.
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            for part in batch.values():
                for record in part:
                    if record.timestamp >= first and (limit is None or record.timestamp <= limit):
                        yield record
            if not batch and await _at_end(consumer, tps):
                break
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    for tp in tps:
        mark = consumer.highwater(tp)
        if mark is None or await consumer.position(tp) < mark:
            return False
    return True


class Replay:
    """Checks replayed records against the archive and its latest signed checkpoint."""

    def __init__(self, verifier: Verifier, archive: Archive | None, topic: str) -> None:
        self.verifier = verifier
        self.archive = archive
        self.topic = topic
        self.report = Report(f"replay {topic}")
        self.latest: Checkpoint | None = None
        if archive is not None:
            stored = archive.latest_checkpoint()
            if stored is not None:
                origin = stored.checkpoint.origin
                try:
                    self.latest = verifier.verify_checkpoint(stored.signed, archive.log_key(origin))
                    self.report.checkpoints.append(checkpoint_seen(self.latest, stored.at, True))
                except DocbusError as exc:
                    self.report.checkpoints.append(
                        checkpoint_seen(stored.checkpoint, stored.at, False)
                    )
                    self.report.findings.append(
                        Finding("forged checkpoint", "latest checkpoint", exc.message)
                    )

    def check(self, record: Record) -> None:
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        value = record.value or b""
        if ".rejected" in record.topic:
            reason = (header(record.headers, "docbus.error.reason") or b"?").decode()
            self.report.counts[f"rejected: {reason}"] += 1
            self.report.rejected.append(
                {
                    "where": where,
                    "reason": reason,
                    "stage": (header(record.headers, "docbus.error.stage") or b"?").decode(),
                }
            )
            return
        delivered = ".deliver." in record.topic
        verdict = (
            self.verifier.verify_delivered(value, header(record.headers, RECEIPT))
            if delivered
            else self.verifier.verify(value, record_time(record.timestamp))
        )
        if isinstance(verdict, Rejected):
            archived = self.archive is not None and self.archive.by_digest(
                hashlib.sha256(value).hexdigest()
            )
            if delivered and archived:
                self.report.findings.append(
                    Finding(
                        "signature no longer valid",
                        where,
                        f"{verdict.reason.value}: {verdict.message}",
                    )
                )
            else:  # refused when it came (e.g. written past the gateway): nothing altered
                self.report.counts[f"rejected: {verdict.reason.value}"] += 1
                self.report.rejected.append(
                    {"where": where, "reason": verdict.reason.value, "stage": "replay"}
                )
            return
        if isinstance(verdict.payload, Status):
            self.report.counts[f"status {verdict.payload.code.value}"] += 1
            return
        self._check_archived(verdict.payload, value, where)

    def _check_archived(self, doc: Document, value: bytes, where: str) -> None:
        if self.archive is None:
            self.report.counts["verified"] += 1
            return
        entry = self.archive.by_digest(hashlib.sha256(value).hexdigest())
        if entry is None:
            others = [e for e in self.archive.find(doc.document_id) if e.revision == doc.revision]
            kind = "bytes differ" if others else "missing from the archive"
            self.report.findings.append(Finding(kind, where, f"{doc.document_id} r{doc.revision}"))
            return
        latest = self.latest
        if latest is None or entry.log_index >= latest.size:
            self.report.findings.append(
                Finding(
                    "not yet covered",
                    where,
                    f"log index {entry.log_index} is past the latest checkpoint",
                )
            )
            return
        proof = self.archive.inclusion_proof(entry.log_index, latest.size)
        if not verify_inclusion(leaf_hash(value), entry.log_index, latest.size, proof, latest.root):
            self.report.findings.append(
                Finding("proof fails", where, f"log index {entry.log_index}")
            )
            return
        self.report.counts["verified and archived"] += 1


async def replay(
    settings: KafkaSettings,
    topic: str,
    verifier: Verifier,
    archive: Archive | None,
    start: datetime | None = None,
    end: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Re-read ``topic`` over [start, end] and check every event (see :class:`Replay`)."""
    checker = Replay(verifier, archive, topic)
    n = 0
    async for record in read_topics(settings, [topic], start, end):
        checker.check(record)
        n += 1
        if progress is not None:
            progress(n)
    checker.report.counts["records read"] = n
    return checker.report


async def delivery_topics(settings: KafkaSettings) -> list[str]:
    consumer = AIOKafkaConsumer(**settings.common(), group_id=None)
    await consumer.start()
    try:
        prefix = settings.topics.deliver("")
        return sorted(t for t in await consumer.topics() if t.startswith(prefix))
    finally:
        await consumer.stop()
