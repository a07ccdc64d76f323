"""``verify-archive`` (DESIGN §6): every entry re-verified at its signed receipt time, every
column against the event bytes, every row covered by a signed checkpoint, successive
checkpoints proven consistent, in one streaming pass with bounded memory."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from bus.audit.report import Finding, Report, checkpoint_seen
from bus.audit.witness import Published
from bus.store.archive import Archive
from bus.store.documents import Entry
from bus.tlog.checkpoint import Checkpoint, note_text
from bus.tlog.merkle import CompactRange, leaf_hash, verify_consistency
from bus.tlog.note import add_lines
from bus.trust.verifier import Rejected, Verifier
from bus.wire.errors import DocbusError
from bus.wire.model import Document

#: A removed row leaves a hole no real leaf hash can fill: later roots will differ.
_HOLE = b"\x00" * 32


def verify_archive(
    archive: Archive,
    verifier: Verifier,
    progress: Callable[[int, int], None] | None = None,
    witnesses_required: int = 0,
    topic: Published | None = None,
) -> Report:
    """Check the archive against its signed checkpoints and its entries against their bytes.

    Names every changed, removed, reordered or appended row, every edited column or
    conflict flag, every entry whose signatures no longer verify at its receipt time,
    every forged or inconsistent checkpoint and every checkpoint the rows do not reproduce.
    """
    report = Report(f"verify-archive {archive.name}")
    roots = _check_checkpoints(archive, verifier, report, witnesses_required, topic or Published())
    if topic is not None:
        _check_published(archive, verifier, topic, roots, report)
    total = archive.count()
    report.counts["entries"] = total
    compact = CompactRange()
    for n, entry in enumerate(archive.stream(), start=1):
        while compact.size < entry.log_index:  # rows gone before this one
            report.findings.append(
                Finding("row removed", f"log index {compact.size}", "no archived entry holds it")
            )
            _append(compact, _HOLE, roots, report)
        where = (
            f"row {entry.seq} ({entry.document_id} r{entry.revision}, log index {entry.log_index})"
        )
        if entry.log_index < compact.size:
            report.findings.append(
                Finding("rows reordered", where, f"log index {entry.log_index} runs backwards")
            )
            continue
        _check_entry(archive, verifier, entry, where, report)
        _append(compact, leaf_hash(entry.event), roots, report)
        if progress is not None:
            progress(n, total)
    _check_order(archive, report)
    covered = max(roots, default=0)
    if compact.size > covered:
        report.findings.append(
            Finding(
                "not covered by a checkpoint",
                f"log indexes {covered}–{compact.size - 1}",
                "no signed checkpoint includes these rows",
            )
        )
    for size in sorted(s for s in roots if s > compact.size):
        report.findings.append(
            Finding(
                "entries lost",
                f"checkpoint of size {size}",
                f"the archive holds {compact.size} log entries",
            )
        )
    for index in range(compact.size, covered):
        report.findings.append(
            Finding("row removed", f"log index {index}", "no archived entry holds it")
        )
    report.counts["log entries"] = compact.size
    report.counts["checkpoints"] = len(report.checkpoints)
    return report


def _check_order(archive: Archive, report: Report) -> None:
    """Rows are archived in log order: a log index that runs backwards was moved."""
    previous: tuple[int, int] | None = None
    for seq, index in archive.order():
        if previous is not None and previous[1] > index:
            report.findings.append(
                Finding(
                    "rows reordered",
                    f"rows {previous[0]} and {seq}",
                    f"log indexes {previous[1]} and {index} run backwards",
                )
            )
        previous = (seq, index)


def _append(compact: CompactRange, leaf: bytes, roots: dict[int, bytes], report: Report) -> None:
    compact.append(leaf)
    signed = roots.get(compact.size)
    if signed is not None and compact.root() != signed:
        report.findings.append(
            Finding(
                "checkpoint not reproduced",
                f"checkpoint of size {compact.size}",
                "the archived entries give another root hash",
            )
        )


def _check_entry(
    archive: Archive, verifier: Verifier, e: Entry, where: str, report: Report
) -> None:
    """One row: its digest, its logged leaf, its signatures at its receipt time, its columns
    against the event bytes, and its conflict flag against the rows before it."""
    if hashlib.sha256(e.event).hexdigest() != e.digest:
        report.findings.append(
            Finding("bytes changed", where, "the event no longer matches its digest")
        )
    if archive.leaf(e.log_index) != leaf_hash(e.event):
        report.findings.append(Finding("entry changed", where, "its bytes are not the logged leaf"))
    verdict = verifier.verify_delivered(e.event, e.receipt or None)
    if isinstance(verdict, Rejected):
        report.findings.append(
            Finding(
                "signature not valid at receipt",
                where,
                f"{verdict.reason.value}: {verdict.message}",
            )
        )
        return
    report.counts["signatures verified"] += 1
    doc = verdict.payload
    if not isinstance(doc, Document):
        report.findings.append(Finding("not a document", where, "the event is not a document"))
        return
    said = {
        "document_id": doc.document_id,
        "revision": doc.revision,
        "sender": doc.sender,
        "recipients": doc.recipients,
        "subject": "" if doc.sealed else doc.subject,
        "confidentiality": doc.confidentiality.value,
        "received_at": verdict.at,
    }
    for column, value in said.items():
        if getattr(e, column) != value:
            report.findings.append(
                Finding("column edited", where, f"{column} differs from the event bytes")
            )
    if hashlib.sha256(verdict.event.payload).hexdigest() != e.payload_digest:
        report.findings.append(
            Finding("column edited", where, "payload_digest differs from the event bytes")
        )
    original = archive.original_payload(doc.sender, doc.document_id, doc.revision)
    if e.conflict != (original != e.payload_digest):
        report.findings.append(
            Finding(
                "conflict flag edited",
                where,
                "flagged a conflict though it is the document first archived"
                if e.conflict
                else "not flagged though another version was archived first",
            )
        )


def _check_checkpoints(
    archive: Archive,
    verifier: Verifier,
    report: Report,
    witnesses_required: int,
    topic: Published,
) -> dict[int, bytes]:
    """Every stored checkpoint: its signature by the log's pinned key, and a consistency
    proof (from the stored log nodes) from the one before. Returns the verified roots."""
    roots: dict[int, bytes] = {}
    previous: Checkpoint | None = None
    for stored in archive.checkpoints():
        cp = stored.checkpoint
        try:
            chain = archive.log_key(cp.origin)
            note = add_lines(stored.signed, topic.cosignatures.get(cp.text(), ()))
            verified = verifier.verify_checkpoint(
                note, chain, witnesses_required, topic.witnesses, at=stored.at
            )
        except DocbusError as exc:
            report.checkpoints.append(checkpoint_seen(cp, stored.at, False))
            report.findings.append(
                Finding("forged checkpoint", f"checkpoint of size {cp.size}", exc.message)
            )
            continue
        cosigners = tuple(line.split()[1] for line in topic.cosignatures.get(cp.text(), ()))
        report.checkpoints.append(checkpoint_seen(verified, stored.at, True, cosigners))
        if previous is not None:
            try:
                proof = archive.consistency_proof(previous.size, verified.size)
            except (KeyError, ValueError):
                proof = []
            if not verify_consistency(
                previous.size, verified.size, previous.root, verified.root, proof
            ):
                report.findings.append(
                    Finding(
                        "inconsistent checkpoints",
                        f"sizes {previous.size} → {verified.size}",
                        "no consistency proof: the later checkpoint does not extend the earlier",
                    )
                )
        roots[verified.size] = verified.root
        previous = verified
    return roots


def _check_published(
    archive: Archive,
    verifier: Verifier,
    topic: Published,
    roots: dict[int, bytes],
    report: Report,
) -> None:
    """Every checkpoint the log published must be in the archive with the same root: a
    truncated archive (its newest rows and checkpoints deleted) is caught here."""
    for note in topic.notes:
        try:
            text = note_text(note)
            origin = Checkpoint.parse(text).origin
            cp = verifier.verify_checkpoint(note, archive.log_key(origin))
        except DocbusError:
            continue  # not this log's, or not a checkpoint: the witness rejects those
        known = roots.get(cp.size)
        if known is None:
            report.findings.append(
                Finding(
                    "checkpoint missing",
                    f"checkpoint of size {cp.size}",
                    "published on the checkpoint topic, not in the archive",
                )
            )
            roots[cp.size] = cp.root
        elif known != cp.root:
            report.findings.append(
                Finding(
                    "split view",
                    f"checkpoint of size {cp.size}",
                    "the archive and the checkpoint topic hold different roots",
                )
            )
