"""``rebuild``: replay the delivery topics into an empty archive in the log order the
receipts prove; its checkpoints must equal the original's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bus.audit.replay import delivery_topics, read_topics
from bus.audit.report import Finding, Report, checkpoint_seen
from bus.kafka.clients import KafkaSettings
from bus.kafka.runtime import Record
from bus.store.archive import Archive, open_archive
from bus.store.documents import NewEntry
from bus.tlog.checkpoint import Checkpoint
from bus.tlog.merkle import leaf_hash, verify_inclusion
from bus.trust.signing import SigningKey, sign_checkpoint
from bus.trust.verifier import Rejected, Verifier
from bus.wire.errors import DocbusError, Reason
from bus.wire.headers import RECEIPT, header, record_time
from bus.wire.model import Document, Role, Status, StatusCode, now_ms


async def rebuild(
    settings: KafkaSettings,
    verifier: Verifier,
    into: Path,
    key: SigningKey,
    progress: Callable[[int, int | None], None] | None = None,
) -> Report:
    """Replay the delivery topics into an empty archive, in the log order receipts prove.

    Each delivered event's log index is the one whose inclusion proof (in a verified
    ARCHIVED or conflict receipt) holds for its exact bytes. The rebuilt archive signs
    checkpoints at the original sizes; the report names any whose root differs.
    """
    report = Report(f"rebuild into {into}")
    receipts, originals = await _receipts(settings, verifier)
    placed = await _placed(settings, verifier, receipts)
    archive = open_archive(into, create=True)
    try:
        if archive.log_size():
            raise DocbusError(Reason.POLICY, f"{into} already holds an archive")
        assert key.agency is not None
        archive.set_log_key(key.agency, key.chain_der)
        _store_in_log_order(archive, placed, report, progress)
        _sign_original_sizes(archive, originals, key, report)
    finally:
        archive.close()
    return report


async def _receipts(
    settings: KafkaSettings, verifier: Verifier
) -> tuple[dict[tuple[str, int], list[Status]], dict[int, Checkpoint]]:
    """Verified ARCHIVED and conflict receipts by document, and the checkpoints they carry."""
    receipts: dict[tuple[str, int], list[Status]] = {}
    originals: dict[int, Checkpoint] = {}
    async for record in read_topics(settings, [settings.topics.status], None, None):
        verdict = verifier.verify(record.value or b"", record_time(record.timestamp))
        status = verdict.payload
        if isinstance(verdict, Rejected) or not isinstance(status, Status) or status.log is None:
            continue
        if status.code not in (StatusCode.ARCHIVED, StatusCode.REJECTED):
            continue
        chains = [sig.cert_chain for sig in verdict.event.signatures if sig.role is Role.SERVICE]
        try:
            cp = verifier.verify_checkpoint(
                status.log.checkpoint, chains[0] if chains else [], at=status.at
            )
        except DocbusError:
            continue
        originals[cp.size] = cp
        receipts.setdefault((status.document_id, status.revision), []).append(status)
    return receipts, originals


async def _placed(
    settings: KafkaSettings, verifier: Verifier, receipts: dict[tuple[str, int], list[Status]]
) -> dict[int, tuple[Record, Document, datetime]]:
    """Each delivered event at the log index a receipt's inclusion proof gives its bytes."""
    placed: dict[int, tuple[Record, Document, datetime]] = {}
    async for record in read_topics(settings, await delivery_topics(settings), None, None):
        value = record.value or b""
        verdict = verifier.verify_delivered(value, header(record.headers, RECEIPT))
        doc = verdict.payload
        if isinstance(verdict, Rejected) or not isinstance(doc, Document):
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
                placed.setdefault(proof.index, (record, doc, verdict.at))
                break
    return placed


def _store_in_log_order(
    archive: Archive,
    placed: dict[int, tuple[Record, Document, datetime]],
    report: Report,
    progress: Callable[[int, int | None], None] | None = None,
) -> None:
    total = max(placed, default=-1) + 1
    for index in range(total):
        if progress is not None:
            progress(index, total)
        if index not in placed:
            report.findings.append(
                Finding(
                    "cannot rebuild",
                    f"log index {index}",
                    "no delivered event proves this position",
                )
            )
            break
        record, doc, received = placed[index]
        receipt = header(record.headers, RECEIPT) or b""
        archive.store([NewEntry.of(doc, record.value or b"", record.topic, received, receipt)])
    report.counts["entries rebuilt"] = archive.log_size()


def _sign_original_sizes(
    archive: Archive, originals: dict[int, Checkpoint], key: SigningKey, report: Report
) -> None:
    for size, original in sorted(originals.items()):
        if size > archive.log_size():
            report.findings.append(
                Finding("checkpoint not reached", f"size {size}", "entries missing")
            )
            continue
        root = archive.root(size)
        rebuilt = Checkpoint(key.agency or "docbus.auditor", size, root)
        archive.add_checkpoint(rebuilt, sign_checkpoint(rebuilt, key), now_ms())
        report.checkpoints.append(checkpoint_seen(rebuilt, None, root == original.root))
        if root != original.root:
            report.findings.append(
                Finding(
                    "checkpoint differs",
                    f"size {size}",
                    f"rebuilt {root.hex()} ≠ original {original.root.hex()}",
                )
            )
    report.counts["checkpoints equal"] = sum(c.signed_ok for c in report.checkpoints)
