"""``verify-archive``: recompute the transparency log from the archived entries and check
every signed checkpoint against it (DESIGN §6)."""

from __future__ import annotations

import hashlib
import itertools

from bus.audit.report import Finding, Report, checkpoint_seen
from bus.store.archive import Archive, Entry
from bus.tlog.checkpoint import Checkpoint
from bus.tlog.merkle import MemoryTree, consistency_proof, leaf_hash, verify_consistency
from bus.trust.verifier import Verifier
from bus.wire.errors import DocbusError


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
    by_index = _check_rows(entries, logged, report)
    size = max(len(logged), max(by_index, default=-1) + 1)
    tree = MemoryTree()
    for i in range(size):
        present = by_index.get(i)
        if present is None:
            report.findings.append(
                Finding("row removed", f"log index {i}", "no archived entry holds it")
            )
        # A removed row leaves a hole no real leaf hash can fill: later roots will differ.
        tree.append(leaf_hash(present.event) if present is not None else b"\x00" * 32)
    _check_checkpoints(archive, verifier, tree, report)
    report.counts["checkpoints"] = len(report.checkpoints)
    return report


def _check_rows(entries: list[Entry], logged: list[bytes], report: Report) -> dict[int, Entry]:
    """Each row against its digest and its logged leaf; rows by log index."""
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
    return by_index


def _check_checkpoints(
    archive: Archive, verifier: Verifier, tree: MemoryTree, report: Report
) -> None:
    """Every stored checkpoint: its signature, its root against the recomputed tree, and
    its consistency with the one before."""
    previous: Checkpoint | None = None
    for stored in archive.checkpoints():
        cp = stored.checkpoint
        try:
            verifier.verify_checkpoint(stored.signed)
        except DocbusError as exc:
            report.checkpoints.append(checkpoint_seen(cp, False))
            report.findings.append(
                Finding("forged checkpoint", f"checkpoint of size {cp.size}", exc.message)
            )
            continue
        report.checkpoints.append(checkpoint_seen(cp, True))
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
