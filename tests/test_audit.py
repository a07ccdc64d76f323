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
from bus.store.archive import SqliteArchive
from bus.store.blobs import BlobStore
from bus.store.outbox import State
from bus.tlog.checkpoint import Checkpoint
from bus.tlog.merkle import leaf_hash, verify_inclusion
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
    archive = SqliteArchive(folder / "archive.sqlite")
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
    archive = SqliteArchive(path)
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
        copy = SqliteArchive(tmp_path / "rebuilt" / "archive.sqlite")
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

    with SqliteArchive(archive_file) as archive:
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


def _doc_of(value: bytes) -> Document:
    codec = default_codec()
    return codec.decode_document(codec.decode_event(value).payload)


def test_checkpoint_and_prove_print_what_a_tlog_client_checks(
    archive_file: Path, tmp_path: Path, archiver_key: SigningKey
) -> None:
    from bus.tlog.checkpoint import open_checkpoint
    from bus.tlog.merkle import leaf_hash
    from bus.trust.signing import note_signer

    path = _copy(archive_file, tmp_path)
    run = [sys.executable, "-m", "bus", "audit"]
    note = subprocess.run(
        [*run, "checkpoint", "--data-dir", tmp_path], capture_output=True, check=True
    ).stdout
    with SqliteArchive(path) as archive:
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
    archive = SqliteArchive(archive_file)
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
    archive = SqliteArchive(archive_file)
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
