"""Auditing: a tampered archive is caught and named; replay and rebuild on a real broker."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bus.audit.evidence import Evidence, check_evidence, export_evidence
from bus.audit.rebuild import rebuild
from bus.audit.replay import replay
from bus.audit.report import Report, write_report
from bus.audit.verify import verify_archive
from bus.kafka.broker import EmbeddedBroker
from bus.kafka.records import document_record
from bus.kafka.topics import Topics
from bus.registry import Registry, load_registry
from bus.store.archive import Archive, NewEntry
from bus.store.blobs import BlobStore
from bus.store.outbox import State
from bus.tlog.checkpoint import Checkpoint
from bus.tlog.merkle import MemoryTree, leaf_hash, verify_inclusion
from bus.trust.pki import CertRole, DevPki, KeyAlgorithm
from bus.trust.signing import SigningKey, sign_checkpoint
from bus.trust.verifier import Policy, Verifier
from bus.wire.codec import default_codec
from bus.wire.errors import DocbusError, Reason
from bus.wire.model import Document, Role, now_ms
from consumers.archiver import Archiver
from producers.document import new_document
from tests.conftest import MINISTRY, Pki
from tests.records import delivered
from tests.stack import BAC_NINH, NGHE_AN, running_stack


@pytest.fixture(scope="module")
def archiver_key(pki: Pki) -> SigningKey:
    return pki.key("docbus.archiver", Role.SERVICE)


@pytest.fixture(scope="module")
def archive_file(
    pki: Pki, archiver_key: SigningKey, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An archive of 7 documents written by the real archiver in three batches."""
    folder = tmp_path_factory.mktemp("archive")
    archive = Archive(folder / "archive.sqlite")
    archiver = Archiver(
        archive,
        archiver_key,
        Topics(),
        Verifier(pki.trust, Policy(), load_registry()),
        BlobStore(folder / "blobs"),
    )
    gateway = pki.key("docbus.gateway", Role.SERVICE)
    keys = [pki.key(MINISTRY, Role.SIGNER), pki.key(MINISTRY, Role.AGENCY)]
    records = [
        document_record(new_document(MINISTRY, [NGHE_AN], f"Văn bản {i}"), keys) for i in range(7)
    ]
    for batch in (records[:3], records[3:5], records[5:]):
        asyncio.run(archiver.handle([delivered(v, gateway, i) for i, v in enumerate(batch)]))
    archive.close()
    return folder / "archive.sqlite"


def _audit(path: Path, pki: Pki) -> Report:
    archive = Archive(path)
    try:
        return verify_archive(archive, Verifier(pki.trust))
    finally:
        archive.close()


def _copy(archive_file: Path, tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    copy = tmp_path / "archive.sqlite"
    shutil.copy(archive_file, copy)
    return copy


def _kinds(report: Report) -> set[tuple[str, str]]:
    return {(f.kind, f.where.split(" (")[0]) for f in report.findings}


def test_an_untouched_archive_is_clean(archive_file: Path, pki: Pki, tmp_path: Path) -> None:
    report = _audit(_copy(archive_file, tmp_path), pki)
    assert report.clean, report.findings
    assert [c.size for c in report.checkpoints] == [3, 5, 7]
    assert all(c.signed_ok for c in report.checkpoints)


def test_one_edited_byte_is_found_and_named(archive_file: Path, pki: Pki, tmp_path: Path) -> None:
    path = _copy(archive_file, tmp_path)
    with sqlite3.connect(path) as db:
        event = bytearray(db.execute("SELECT event FROM entries WHERE seq = 4").fetchone()[0])
        event[len(event) // 2] ^= 0x01
        db.execute("UPDATE entries SET event = ? WHERE seq = 4", (bytes(event),))
    kinds = _kinds(_audit(path, pki))
    assert ("bytes changed", "row 4") in kinds and ("entry changed", "row 4") in kinds
    assert ("checkpoint not reproduced", "checkpoint of size 5") in kinds


def test_an_edit_that_also_rewrites_digest_and_log_is_caught_by_the_signed_checkpoints(
    archive_file: Path, pki: Pki, tmp_path: Path
) -> None:
    import hashlib

    from bus.tlog.merkle import leaf_hash

    path = _copy(archive_file, tmp_path)
    with sqlite3.connect(path) as db:
        event = bytearray(db.execute("SELECT event FROM entries WHERE seq = 2").fetchone()[0])
        event[-10] ^= 0x01
        db.execute(
            "UPDATE entries SET event = ?, digest = ? WHERE seq = 2",
            (bytes(event), hashlib.sha256(event).hexdigest()),
        )
        db.execute(
            "UPDATE log_nodes SET hash = ? WHERE level = 0 AND idx = 1", (leaf_hash(bytes(event)),)
        )
    kinds = _kinds(_audit(path, pki))
    assert ("checkpoint not reproduced", "checkpoint of size 3") in kinds


def test_a_deleted_row_is_found_and_named(archive_file: Path, pki: Pki, tmp_path: Path) -> None:
    path = _copy(archive_file, tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM entries WHERE seq = 2")
    kinds = _kinds(_audit(path, pki))
    assert ("row removed", "log index 1") in kinds


def test_two_swapped_rows_are_found_and_named(archive_file: Path, pki: Pki, tmp_path: Path) -> None:
    path = _copy(archive_file, tmp_path)
    with sqlite3.connect(path) as db:
        a = db.execute("SELECT document_id, digest, event FROM entries WHERE seq = 2").fetchone()
        b = db.execute("SELECT document_id, digest, event FROM entries WHERE seq = 6").fetchone()
        db.execute("UPDATE entries SET document_id = 'moving' WHERE seq = 2")
        db.execute("UPDATE entries SET document_id = ?, digest = ?, event = ? WHERE seq = 6", a)
        db.execute("UPDATE entries SET document_id = ?, digest = ?, event = ? WHERE seq = 2", b)
    kinds = _kinds(_audit(path, pki))
    assert ("entry changed", "row 2") in kinds and ("entry changed", "row 6") in kinds
    # Swapping their places in the log instead is named as a reordering.
    path = _copy(archive_file, tmp_path / "order")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE entries SET log_index = -1 WHERE seq = 2")
        db.execute("UPDATE entries SET log_index = 1 WHERE seq = 6")
        db.execute("UPDATE entries SET log_index = 5 WHERE seq = 2")
    kinds = _kinds(_audit(path, pki))
    assert ("rows reordered", "rows 2 and 3") in kinds and ("entry changed", "row 6") in kinds


def test_a_forged_checkpoint_is_found(archive_file: Path, pki: Pki, tmp_path: Path) -> None:
    path = _copy(archive_file, tmp_path)
    rogue = DevPki(tmp_path / "rogue")
    rogue.init()
    impostor = SigningKey.load(
        Role.SERVICE, *rogue.issue("docbus.archiver", CertRole.SERVICE, KeyAlgorithm.ED25519)
    )
    forged = Checkpoint("docbus.archiver", 5, b"\x00" * 32)
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE checkpoints SET signed = ? WHERE size = 5", (sign_checkpoint(forged, impostor),)
        )
    report = _audit(path, pki)
    assert ("forged checkpoint", "checkpoint of size 5") in _kinds(report)
    assert [c.signed_ok for c in report.checkpoints] == [True, False, True]


def test_the_command_exits_1_and_writes_json_and_html(
    archive_file: Path, pki: Pki, tmp_path: Path
) -> None:
    path = _copy(archive_file, tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM entries WHERE seq = 7")
    command = [
        sys.executable,
        "-m",
        "bus",
        "audit",
        "verify-archive",
        "--data-dir",
        str(tmp_path),
        "--trust",
        str(pki.dev.trust_dir),
    ]
    for name in ("report.json", "report.html"):
        done = subprocess.run(
            [*command, "--report", str(tmp_path / name)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "row removed" in done.stdout
    assert '"clean": false' in (tmp_path / "report.json").read_text("utf-8")
    page = (tmp_path / "report.html").read_text("utf-8")
    assert page.startswith("<!DOCTYPE html>") and "row removed" in page and "log index 6" in page
    clean = _copy(archive_file, tmp_path / "clean")
    done = subprocess.run(
        [*command[:-4], "--data-dir", str(clean.parent), "--trust", str(pki.dev.trust_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.integration
async def test_replay_finds_what_is_missing_and_rebuild_gives_equal_checkpoints(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        docs = [
            new_document(MINISTRY, [NGHE_AN, BAC_NINH] if i % 2 else [NGHE_AN], f"Số {i}")
            for i in range(6)
        ]
        for doc in docs:
            await stack.publisher.publish(doc)
        async with asyncio.timeout(30):
            for doc in docs:
                assert (await stack.publisher.wait(doc.document_id)).state is State.ARCHIVED
        await asyncio.sleep(1)  # the second copies of the two-jurisdiction documents
        verifier = Verifier(pki.trust, Policy(), registry)
        report = await replay(stack.settings, "docbus.deliver.nghe-an", verifier, stack.archive)
        assert report.clean, report.findings
        assert report.counts["verified and archived"] == 6
        later = now_ms() + timedelta(hours=1)
        window = await replay(
            stack.settings, "docbus.deliver.nghe-an", verifier, stack.archive, later
        )
        assert window.counts["records read"] == 0 and window.clean
        window = await replay(
            stack.settings,
            "docbus.deliver.nghe-an",
            verifier,
            stack.archive,
            docs[0].issued_at - timedelta(seconds=5),
            later,
        )
        assert window.counts["records read"] == 6
        # Remove one archived document: replay names it, verify-archive names the row.
        victim = stack.archive.find(docs[2].document_id)[0]
        with sqlite3.connect(stack.archive.path) as db:
            db.execute("DELETE FROM entries WHERE seq = ?", (victim.seq,))
        report = await replay(stack.settings, "docbus.deliver.nghe-an", verifier, stack.archive)
        assert [(f.kind, f.detail) for f in report.findings] == [
            ("missing from the archive", f"{docs[2].document_id} r0")
        ]
        write_report(report, tmp_path / "replay.html")
        assert docs[2].document_id in (tmp_path / "replay.html").read_text("utf-8")
        original = [(c.checkpoint.size, c.checkpoint.root) for c in stack.archive.checkpoints()]
        auditor = pki.key("docbus.auditor", Role.SERVICE)
        rebuilt = await rebuild(
            stack.settings,
            Verifier(pki.trust, Policy(issued_at_tolerance=None), registry),
            tmp_path / "rebuilt",
            auditor,
        )
        assert rebuilt.clean, rebuilt.findings
        copy = Archive(tmp_path / "rebuilt" / "archive.sqlite")
        try:
            assert [(c.checkpoint.size, c.checkpoint.root) for c in copy.checkpoints()] == original
            assert copy.log_size() == 6
        finally:
            copy.close()


def test_a_receipt_proves_inclusion_and_a_bent_one_does_not(
    archive_file: Path, pki: Pki, archiver_key: SigningKey
) -> None:
    from bus.kafka.records import status_record
    from bus.trust.verifier import Verified
    from bus.wire.errors import DocbusError
    from bus.wire.model import LogProof, Status, StatusCode

    with Archive(archive_file) as archive:
        entry = archive.entries()[4]
        latest = archive.latest_checkpoint()
        assert latest is not None
        size = latest.checkpoint.size
        proof = LogProof(
            entry.log_index,
            size,
            latest.checkpoint.root,
            tuple(archive.inclusion_proof(entry.log_index, size)),
            latest.signed,
        )
    verifier = Verifier(pki.trust)

    def receipt(log: LogProof) -> Verified:
        status = Status(
            entry.document_id, StatusCode.ARCHIVED, "docbus.archiver", now_ms(), log=log
        )
        verdict = verifier.verify(status_record(status, [archiver_key]), now_ms())
        assert isinstance(verdict, Verified), verdict
        return verdict

    assert verifier.check_receipt(receipt(proof), entry.event).size == size
    with pytest.raises(DocbusError, match="does not hold"):
        verifier.check_receipt(receipt(proof), entry.event + b"\x00")  # other bytes
    bent = dataclasses.replace(proof, index=proof.index + 1)
    with pytest.raises(DocbusError, match="does not hold"):
        verifier.check_receipt(receipt(bent), entry.event)
    moved = dataclasses.replace(proof, root_hash=b"\x11" * 32)
    with pytest.raises(DocbusError, match="not against the checkpoint"):
        verifier.check_receipt(receipt(moved), entry.event)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("subject", "Văn bản đã bị sửa"),
        ("sender", "000.00.00.H41"),
        ("recipients", '["000.00.00.H06"]'),
        ("received_at", "2020-01-01T00:00:00+00:00"),
    ],
)
def test_an_edited_column_is_found_though_the_bytes_are_intact(
    archive_file: Path, pki: Pki, tmp_path: Path, column: str, value: str
) -> None:
    path = _copy(archive_file, tmp_path)
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE entries SET {column} = ? WHERE seq = 3", (value,))
    report = _audit(path, pki)
    assert ("column edited", "row 3") in _kinds(report)
    assert any(column in f.detail for f in report.findings)


def test_a_swapped_conflict_flag_is_found(archive_file: Path, pki: Pki, tmp_path: Path) -> None:
    path = _copy(archive_file, tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE entries SET conflict = 1 WHERE seq = 2")
    assert ("conflict flag edited", "row 2") in _kinds(_audit(path, pki))


def test_an_appended_row_is_not_covered_by_any_checkpoint(
    archive_file: Path, pki: Pki, tmp_path: Path
) -> None:
    # The attacker appends a validly signed document with its log nodes: no signed
    # checkpoint covers it, so the archive is not clean.
    path = _copy(archive_file, tmp_path)
    gateway = pki.key("docbus.gateway", Role.SERVICE)
    keys = [pki.key(MINISTRY, Role.SIGNER), pki.key(MINISTRY, Role.AGENCY)]
    value = document_record(new_document(MINISTRY, [NGHE_AN], "Văn bản chèn thêm"), keys)
    with Archive(path) as archive:
        archive.store([NewEntry.of(_doc_of(value), value, "docbus.deliver.nghe-an", now_ms())])
        assert archive.log_size() == 8
    kinds = _kinds(_audit(path, pki))
    assert ("not covered by a checkpoint", "log indexes 7–7") in kinds
    assert gateway.agency == "docbus.gateway"


def test_a_checkpoint_signed_with_a_pinned_archivers_other_key_is_forged(
    archive_file: Path, pki: Pki, tmp_path: Path
) -> None:
    # A genuine archiver certificate, but not the one this log's key is bound to.
    path = _copy(archive_file, tmp_path)
    other = pki.key("docbus.archiver", Role.SERVICE)
    forged = Checkpoint("docbus.archiver", 7, b"\x07" * 32)
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE checkpoints SET signed = ? WHERE size = 7", (sign_checkpoint(forged, other),)
        )
    assert ("forged checkpoint", "checkpoint of size 7") in _kinds(_audit(path, pki))


def _doc_of(value: bytes) -> Document:
    codec = default_codec()
    return codec.decode_document(codec.decode_event(value).payload)


def test_checkpoint_and_prove_print_what_a_tlog_client_checks(
    archive_file: Path, tmp_path: Path, archiver_key: SigningKey
) -> None:
    from bus.tlog.checkpoint import open_checkpoint
    from bus.tlog.merkle import leaf_hash, verify_inclusion
    from bus.trust.signing import note_signer

    path = _copy(archive_file, tmp_path)
    run = [sys.executable, "-m", "bus", "audit"]
    note = subprocess.run(
        [*run, "checkpoint", "--data-dir", tmp_path], capture_output=True, check=True
    ).stdout
    with Archive(path) as archive:
        latest = archive.latest_checkpoint()
        entry = archive.entries()[2]
    assert latest is not None and note == latest.signed
    checkpoint, _ = open_checkpoint(note, note_signer(archiver_key).verifier())
    assert note.startswith(b"docbus.archiver\n7\n") and checkpoint.size == 7
    done = subprocess.run(
        [*run, "prove", entry.document_id, "--data-dir", tmp_path, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    proof = json.loads(done.stdout)
    assert set(proof) == {"index", "tree_size", "leaf_hash", "proof"}
    assert base64.b64decode(proof["leaf_hash"]) == leaf_hash(entry.event)
    assert verify_inclusion(
        leaf_hash(entry.event),
        proof["index"],
        proof["tree_size"],
        [base64.b64decode(h) for h in proof["proof"]],
        checkpoint.root,
    )
    missing = subprocess.run(
        [*run, "prove", "no-such-document", "--data-dir", tmp_path], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_an_evidence_bundle_proves_one_document_offline_and_catches_any_changed_byte(
    archive_file: Path, pki: Pki, tmp_path: Path
) -> None:
    archive = Archive(archive_file)
    try:
        entry = archive.entries()[3]
        archived = [e.document_id for e in archive.entries()]
    finally:
        archive.close()
    out = tmp_path / "evidence.json"
    docbus = str(Path(sys.executable).with_name("docbus"))
    done = subprocess.run(
        [
            docbus,
            "evidence",
            "export",
            entry.document_id,
            "--data-dir",
            archive_file.parent,
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    checked = subprocess.run(
        [docbus, "evidence", "verify", out, "--trust", pki.dev.trust_dir, "--json"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    proven = json.loads(checked.stdout)
    assert proven["valid"] and proven["document_id"] == entry.document_id
    assert proven["tree_size"] == len(archived) and proven["log"] == "docbus.archiver"
    # Any changed byte is caught: every byte flipped in turn, and spaces slipped in.
    data = out.read_bytes()
    verifier = Verifier(pki.trust, Policy(issued_at_tolerance=None))
    for position in range(len(data)):
        changed = data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]
        with pytest.raises(DocbusError):
            check_evidence(Evidence.from_bytes(changed), verifier)
    for position in range(0, len(data), 97):
        with pytest.raises(DocbusError):
            check_evidence(Evidence.from_bytes(data[:position] + b" " + data[position:]), verifier)
    bad = tmp_path / "changed.json"
    bad.write_bytes(data.replace(b'"index":', b'"index": ', 1))
    refused = subprocess.run(
        [docbus, "evidence", "verify", bad, "--trust", pki.dev.trust_dir],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1 and refused.stdout.startswith("INVALID malformed")


def test_evidence_from_a_log_the_attacker_signs_is_refused(archive_file: Path, pki: Pki) -> None:
    archive = Archive(archive_file)
    try:
        genuine = export_evidence(archive, archive.entries()[0].document_id)
    finally:
        archive.close()
    # A genuine agency key signs a one-leaf "log" holding the record, and ships its chain.
    attacker = pki.key(NGHE_AN, Role.AGENCY)
    assert attacker.agency is not None
    forged_log = Checkpoint(attacker.agency, 1, leaf_hash(genuine.record))
    forged = dataclasses.replace(
        genuine,
        log_key=attacker.chain_der,
        checkpoint=sign_checkpoint(forged_log, attacker),
        index=0,
        tree_size=1,
        proof=(),
    )
    verifier = Verifier(pki.trust, Policy(issued_at_tolerance=None))
    with pytest.raises(DocbusError) as refused:
        check_evidence(Evidence.from_bytes(forged.to_bytes()), verifier)
    assert refused.value.reason in (Reason.POLICY, Reason.ROLE_MISMATCH)


def test_base64_with_other_spare_bits_is_another_byte_and_refused() -> None:
    # b64decode ignores the spare low bits of the last character: "…A=" and "…B=" decode
    # alike, so only encoding again shows the change.
    bundle = Evidence(b"record", b"receipt", (b"cert",), b"note\n", 0, 1, (bytes(32),))
    data = bundle.to_bytes()
    spare = data.replace(
        b'"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="',
        b'"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB="',
    )
    assert spare != data
    assert base64.b64decode(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=") == bytes(32)
    with pytest.raises(DocbusError, match="canonical"):
        Evidence.from_bytes(spare)


def test_log_nodes_of_a_rolled_back_batch_are_never_remembered(pki: Pki, tmp_path: Path) -> None:
    # The archive keeps committed log nodes in memory. A batch that fails after writing its
    # nodes is rolled back; the roots and proofs that follow must be those of the leaves the
    # log holds, exactly as a reader with nothing in memory computes them from the file.
    keys = [pki.key(MINISTRY, Role.SIGNER), pki.key(MINISTRY, Role.AGENCY)]
    values = [
        document_record(new_document(MINISTRY, [NGHE_AN], f"Văn bản {i}"), keys) for i in range(7)
    ]
    entries = [NewEntry.of(_doc_of(v), v, "docbus.deliver.nghe-an", now_ms()) for v in values]
    path = tmp_path / "archive.sqlite"
    with Archive(path) as archive:
        archive.store(entries[:3])
        archive.inclusion_proof(0, 3)  # committed nodes now in memory
        broken = dataclasses.replace(entries[4], subject=None)  # type: ignore[arg-type]
        with pytest.raises(sqlite3.IntegrityError):
            archive.store([entries[3], broken])
        assert archive.log_size() == 3
        archive.store(entries[4:])
        archive.store(entries[3:4])
        order = [*values[:3], *values[4:], values[3]]
        tree = MemoryTree(order)
        assert archive.root(7) == tree.root()
        remembered = [archive.inclusion_proof(i, 7) for i in range(7)]
    with Archive(path) as fresh:  # nothing in memory: every node read from the file
        assert [fresh.inclusion_proof(i, 7) for i in range(7)] == remembered
        for i, value in enumerate(order):
            assert verify_inclusion(leaf_hash(value), i, 7, remembered[i], tree.root())
