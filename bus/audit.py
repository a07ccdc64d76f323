"""Auditing: prove from the archive and the topics that nothing was altered or lost.

``verify_archive`` recomputes the transparency log from the archived bytes and checks
every signed checkpoint against it; ``replay`` re-reads a topic over a time range
(without a consumer group) and checks each event against the archive; ``rebuild``
replays the delivery topics into an empty archive in the log order the receipts prove.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.archive import Archive, NewEntry
from bus.checkpoint import Checkpoint
from bus.errors import DocbusError, Reason
from bus.headers import header, received_at
from bus.kafka import KafkaSettings
from bus.merkle import (
    MemoryTree,
    consistency_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from bus.model import Document, Status, StatusCode
from bus.runtime import Record
from bus.signing import SigningKey
from bus.verifier import Rejected, Verifier


@dataclass(frozen=True)
class Finding:
    """One discrepancy: what kind, where, and what was seen."""

    kind: str
    where: str
    detail: str


@dataclass(frozen=True)
class CheckpointSeen:
    size: int
    root: str
    at: str
    signed_ok: bool


@dataclass
class Report:
    """What an audit looked at and what it found; clean when ``findings`` is empty."""

    title: str
    counts: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    checkpoints: list[CheckpointSeen] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, object]:
        return {
            "title": self.title,
            "clean": self.clean,
            "counts": dict(sorted(self.counts.items())),
            "findings": [f.__dict__ for f in self.findings],
            "checkpoints": [c.__dict__ for c in self.checkpoints],
            "rejected": self.rejected,
        }


def _checkpoint_seen(cp: Checkpoint, ok: bool) -> CheckpointSeen:
    return CheckpointSeen(cp.size, cp.root.hex(), cp.at.isoformat(), ok)


def verify_archive(archive: Archive, verifier: Verifier) -> Report:
    """Recompute the log from the archived entries; check every checkpoint against it.

    Names every changed, removed or reordered row, every forged checkpoint and every
    checkpoint the archive no longer reproduces.
    """
    report = Report(f"verify-archive {archive.path}")
    entries = archive.entries()
    logged = archive.leaf_hashes()
    report.counts["entries"] = len(entries)
    report.counts["log leaves"] = len(logged)
    by_index = {}
    for e in entries:
        where = f"row {e.seq} ({e.document_id} r{e.revision}, log index {e.log_index})"
        if hashlib.sha256(e.event).hexdigest() != e.digest:
            report.findings.append(
                Finding("bytes changed", where, "the event no longer matches its digest")
            )
        if e.log_index < len(logged) and leaf_hash(e.event) != logged[e.log_index]:
            report.findings.append(
                Finding("entry changed", where, "its bytes are not the logged leaf")
            )
        by_index[e.log_index] = e
    for a, b in itertools.pairwise(entries):
        if a.log_index > b.log_index:
            report.findings.append(
                Finding(
                    "rows reordered",
                    f"rows {a.seq} and {b.seq}",
                    f"log indexes {a.log_index} and {b.log_index} run backwards",
                )
            )
    size = max(len(logged), max(by_index, default=-1) + 1)
    missing = [i for i in range(size) if i not in by_index]
    for i in missing:
        report.findings.append(
            Finding("row removed", f"log index {i}", "no archived entry holds it")
        )
    tree = MemoryTree()
    for i in range(size):
        present = by_index.get(i)
        # A removed row leaves a hole no real leaf hash can fill: later roots will differ.
        tree.append(leaf_hash(present.event) if present is not None else b"\x00" * 32)
    previous: Checkpoint | None = None
    for stored in archive.checkpoints():
        cp = stored.checkpoint
        try:
            verifier.verify_checkpoint(stored.signed)
        except DocbusError as exc:
            report.checkpoints.append(_checkpoint_seen(cp, False))
            report.findings.append(
                Finding("forged checkpoint", f"checkpoint of size {cp.size}", exc.message)
            )
            continue
        report.checkpoints.append(_checkpoint_seen(cp, True))
        if cp.size > tree.size:
            report.findings.append(
                Finding(
                    "entries lost",
                    f"checkpoint of size {cp.size}",
                    f"the archive holds {tree.size} log entries",
                )
            )
            continue
        if tree.root(cp.size) != cp.root:
            report.findings.append(
                Finding(
                    "checkpoint not reproduced",
                    f"checkpoint of size {cp.size}",
                    "the archived entries give another root hash",
                )
            )
        if previous is not None:
            proof = consistency_proof(tree.node, previous.size, cp.size)
            if not verify_consistency(previous.size, cp.size, previous.root, cp.root, proof):
                report.findings.append(
                    Finding(
                        "inconsistent checkpoints",
                        f"sizes {previous.size} → {cp.size}",
                        "the later checkpoint does not extend the earlier one",
                    )
                )
        previous = cp
    report.counts["checkpoints"] = len(report.checkpoints)
    return report


async def read_topics(
    settings: KafkaSettings, topics: Sequence[str], start: datetime | None, end: datetime | None
) -> AsyncIterator[Record]:
    """Every record of ``topics`` with a timestamp in [start, end], read without a group."""
    consumer = AIOKafkaConsumer(
        **settings.common(),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    try:
        known = await consumer.topics()
        missing = [t for t in topics if t not in known]
        if missing:
            raise DocbusError(Reason.POLICY, f"no topic {', '.join(missing)}")
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
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
                try:
                    self.latest = verifier.verify_checkpoint(stored.signed)
                    self.report.checkpoints.append(_checkpoint_seen(self.latest, True))
                except DocbusError as exc:
                    self.report.checkpoints.append(_checkpoint_seen(stored.checkpoint, False))
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
        verdict = self.verifier.verify(value, received_at(record.headers, record.timestamp))
        delivered = ".deliver." in record.topic
        if isinstance(verdict, Rejected):
            if delivered:
                self.report.findings.append(
                    Finding(
                        "signature no longer valid",
                        where,
                        f"{verdict.reason.value}: {verdict.message}",
                    )
                )
            else:
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


async def rebuild(
    settings: KafkaSettings, verifier: Verifier, into: Path, key: SigningKey
) -> Report:
    """Replay the delivery topics into an empty archive, in the log order receipts prove.

    Each delivered event's log index is the one whose inclusion proof (in a verified
    ARCHIVED or conflict receipt) holds for its exact bytes. The rebuilt archive signs
    checkpoints at the original sizes; the report names any whose root differs.
    """
    report = Report(f"rebuild into {into}")
    receipts: dict[tuple[str, int], list[Status]] = {}
    originals: dict[int, Checkpoint] = {}
    async for record in read_topics(settings, [settings.topics.status], None, None):
        verdict = verifier.verify(
            record.value or b"", received_at(record.headers, record.timestamp)
        )
        status = verdict.payload
        if isinstance(verdict, Rejected) or not isinstance(status, Status) or status.log is None:
            continue
        if status.code not in (StatusCode.ARCHIVED, StatusCode.REJECTED):
            continue
        try:
            cp = verifier.verify_checkpoint(status.log.checkpoint)
        except DocbusError:
            continue
        originals[cp.size] = cp
        receipts.setdefault((status.document_id, status.revision), []).append(status)
    placed: dict[int, tuple[Record, Document]] = {}
    async for record in read_topics(settings, await delivery_topics(settings), None, None):
        value = record.value or b""
        doc = verifier.verify(value, received_at(record.headers, record.timestamp)).payload
        if not isinstance(doc, Document):
            continue
        for status in receipts.get((doc.document_id, doc.revision), []):
            proof = status.log
            assert proof is not None
            if verify_inclusion(
                leaf_hash(value),
                proof.index,
                proof.tree_size,
                proof.inclusion_proof,
                proof.root_hash,
            ):
                placed.setdefault(proof.index, (record, doc))
                break
    archive = Archive(into / "archive.sqlite")
    try:
        if archive.log_size():
            raise DocbusError(Reason.POLICY, f"{into} already holds an archive")
        for index in range(max(placed, default=-1) + 1):
            if index not in placed:
                report.findings.append(
                    Finding(
                        "cannot rebuild",
                        f"log index {index}",
                        "no delivered event proves this position",
                    )
                )
                break
            record, doc = placed[index]
            value = record.value or b""
            archive.store(
                [
                    NewEntry(
                        doc.document_id,
                        doc.revision,
                        hashlib.sha256(value).hexdigest(),
                        doc.sender,
                        doc.recipients,
                        "" if doc.sealed else doc.subject,
                        doc.confidentiality.value,
                        record.topic,
                        received_at(record.headers, record.timestamp),
                        value,
                    )
                ]
            )
        report.counts["entries rebuilt"] = archive.log_size()
        for size, original in sorted(originals.items()):
            if size > archive.log_size():
                report.findings.append(
                    Finding("checkpoint not reached", f"size {size}", "entries missing")
                )
                continue
            root = archive.root(size)
            rebuilt = Checkpoint(key.agency or "docbus.auditor", size, root, original.at)
            archive.add_checkpoint(rebuilt, rebuilt.sign(key))
            report.checkpoints.append(_checkpoint_seen(rebuilt, root == original.root))
            if root != original.root:
                report.findings.append(
                    Finding(
                        "checkpoint differs",
                        f"size {size}",
                        f"rebuilt {root.hex()} ≠ original {original.root.hex()}",
                    )
                )
        report.counts["checkpoints equal"] = sum(c.signed_ok for c in report.checkpoints)
    finally:
        archive.close()
    return report
