"""The archive store, the same tests on SQLite and on PostgreSQL (DESIGN §6).

What is stored once, what conflicts, what is refused; the log's roots and proofs; the
schema's versions; and every tampering verify-archive must find, made with the database's
own tools as an attacker with access to it would.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from bus.audit.report import Report
from bus.audit.verify import verify_archive
from bus.kafka.records import document_record
from bus.kafka.topics import Topics
from bus.registry import load_registry
from bus.store.archive import ARCHIVE_FILE, SqliteArchive
from bus.store.blobs import BlobStore
from bus.store.documents import NewEntry, Search, Stored
from bus.tlog.checkpoint import Checkpoint
from bus.tlog.merkle import MemoryTree, leaf_hash, verify_consistency, verify_inclusion
from bus.trust.pki import CertRole, DevPki, KeyAlgorithm
from bus.trust.signing import SigningKey, sign_checkpoint
from bus.trust.verifier import Policy, Verifier
from bus.wire.codec import default_codec
from bus.wire.errors import Misconfigured
from bus.wire.model import Action, Document, Role, now_ms
from consumers.archiver import Archiver
from producers.document import new_document
from tests.conftest import MINISTRY, POSTGRES, PROVINCE, Pki, Store
from tests.records import delivered

TOPIC = "docbus.deliver.nghe-an"


@pytest.fixture(scope="module")
def archiver_key(pki: Pki) -> SigningKey:
    return pki.key("docbus.archiver", Role.SERVICE)


@pytest.fixture(scope="module")
def keys(pki: Pki) -> list[SigningKey]:
    return [pki.key(MINISTRY, Role.SIGNER), pki.key(MINISTRY, Role.AGENCY)]


def _doc_of(value: bytes) -> Document:
    codec = default_codec()
    return codec.decode_document(codec.decode_event(value).payload)


def _entry(value: bytes) -> NewEntry:
    return NewEntry.of(_doc_of(value), value, TOPIC, now_ms())


@pytest.fixture
def audited(store: Store, pki: Pki, archiver_key: SigningKey, keys: list[SigningKey]) -> Store:
    """An archive of 7 documents written by the real archiver in three batches."""
    archive = store.open()
    archiver = Archiver(
        archive,
        archiver_key,
        Topics(),
        Verifier(pki.trust, Policy(), load_registry()),
        BlobStore(store.data_dir / "bus-blobs"),
    )
    gateway = pki.key("docbus.gateway", Role.SERVICE)
    records = [
        document_record(new_document(MINISTRY, [PROVINCE], f"Văn bản {i}"), keys) for i in range(7)
    ]
    for batch in (records[:3], records[3:5], records[5:]):
        asyncio.run(archiver.handle([delivered(v, gateway, i) for i, v in enumerate(batch)]))
    archive.close()
    return store


def _audit(store: Store, pki: Pki) -> Report:
    with store.open(create=False) as archive:
        return verify_archive(archive, Verifier(pki.trust))


def _kinds(report: Report) -> set[tuple[str, str]]:
    return {(f.kind, f.where.split(" (")[0]) for f in report.findings}


def _event(store: Store, seq: int) -> bytearray:
    with store.open(create=False) as archive:
        return bytearray(next(e.event for e in archive.entries() if e.seq == seq))


# What is stored, once.


def test_each_identity_is_stored_once_and_a_changed_digest_is_a_kept_conflict(
    store: Store, keys: list[SigningKey]
) -> None:
    first = document_record(new_document(MINISTRY, [PROVINCE], "Kế hoạch năm 2026"), keys)
    doc = _doc_of(first)
    other = document_record(dataclasses.replace(doc, subject="Kế hoạch (sửa)"), keys)
    with store.open() as archive:
        assert archive.store([_entry(first)]) == [(Stored.NEW, 0)]
        assert archive.store([_entry(first)]) == [(Stored.DUPLICATE, 0)]
        assert archive.store([_entry(other)]) == [(Stored.CONFLICT, 1)]
        assert archive.store([_entry(other)]) == [(Stored.CONFLICT, 1)]
        rows = archive.find(doc.document_id)
        assert [(r.log_index, r.conflict) for r in rows] == [(0, False), (1, True)]
        assert archive.by_digest(rows[0].digest) == rows[0]
        assert archive.count() == 2 and archive.log_size() == 2


def test_a_revision_is_refused_unless_it_follows_one_of_its_sender(
    store: Store, pki: Pki, keys: list[SigningKey]
) -> None:
    original = document_record(new_document(MINISTRY, [PROVINCE], "Quyết định 12"), keys)
    doc = _doc_of(original)
    revoke = dataclasses.replace(doc, revision=1, action=Action.REVOKE)
    province = [pki.key(PROVINCE, Role.SIGNER), pki.key(PROVINCE, Role.AGENCY)]
    hijack = document_record(dataclasses.replace(revoke, sender=PROVINCE), province)
    with store.open() as archive:
        assert archive.store([_entry(document_record(revoke, keys))]) == [(Stored.REFUSED, -1)]
        assert archive.store([_entry(original)]) == [(Stored.NEW, 0)]
        assert archive.store([_entry(hijack)]) == [(Stored.REFUSED, -1)]
        assert archive.store([_entry(document_record(revoke, keys))]) == [(Stored.NEW, 1)]


def test_roots_and_proofs_are_those_of_the_rfc6962_tree(
    store: Store, keys: list[SigningKey]
) -> None:
    values = [
        document_record(new_document(MINISTRY, [PROVINCE], f"Công văn {i}"), keys)
        for i in range(11)
    ]
    with store.open() as archive:
        for batch in (values[:1], values[1:4], values[4:]):
            archive.store([_entry(v) for v in batch])
        tree = MemoryTree(values)
        assert archive.root(11) == tree.root()
        for i, v in enumerate(values):
            assert verify_inclusion(
                leaf_hash(v), i, 11, archive.inclusion_proof(i, 11), tree.root()
            )
        consistency = archive.consistency_proof(4, 11)
        assert verify_consistency(4, 11, tree.root(4), tree.root(), consistency)


def test_log_nodes_of_a_rolled_back_batch_are_never_remembered(
    store: Store, keys: list[SigningKey]
) -> None:
    # The archive keeps committed log nodes in memory. A batch that fails after writing its
    # nodes is rolled back; the roots and proofs that follow must be those of the leaves the
    # log holds, exactly as a reader with nothing in memory computes them.
    values = [
        document_record(new_document(MINISTRY, [PROVINCE], f"Văn bản {i}"), keys) for i in range(7)
    ]
    entries = [_entry(v) for v in values]
    with store.open() as archive:
        archive.store(entries[:3])
        archive.inclusion_proof(0, 3)  # committed nodes now in memory
        broken = dataclasses.replace(entries[4], subject=None)  # type: ignore[arg-type]
        with pytest.raises((sqlite3.IntegrityError, psycopg.errors.NotNullViolation)):
            archive.store([entries[3], broken])
        assert archive.log_size() == 3
        archive.store(entries[4:])
        archive.store(entries[3:4])
        order = [*values[:3], *values[4:], values[3]]
        tree = MemoryTree(order)
        assert archive.root(7) == tree.root()
        remembered = [archive.inclusion_proof(i, 7) for i in range(7)]
    with store.open() as fresh:
        assert [fresh.inclusion_proof(i, 7) for i in range(7)] == remembered


def test_checkpoints_and_log_keys_are_kept_as_given(store: Store, archiver_key: SigningKey) -> None:
    at = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
    with store.open() as archive:
        for size in (5, 3):
            checkpoint = Checkpoint("docbus.archiver", size, bytes([size]) * 32)
            archive.add_checkpoint(checkpoint, sign_checkpoint(checkpoint, archiver_key), at)
        archive.add_checkpoint(Checkpoint("docbus.archiver", 5, b"\x00" * 32), b"other", at)
        assert [c.checkpoint.size for c in archive.checkpoints()] == [3, 5]
        latest = archive.latest_checkpoint()
        assert latest is not None and latest.checkpoint.root == b"\x05" * 32 and latest.at == at
        archive.set_log_key("docbus.archiver", [b"leaf", b"ca"])
        archive.set_log_key("docbus.archiver", archiver_key.chain_der)
        assert archive.log_key("docbus.archiver") == list(archiver_key.chain_der)
        assert archive.log_key("elsewhere") == []


def test_search_finds_subjects_with_or_without_diacritics_page_by_page(
    store: Store, keys: list[SigningKey]
) -> None:
    subjects = ["Kế hoạch chuyển đổi số", "Báo cáo tháng", "KẾ HOẠCH phòng chống thiên tai"]
    values = [document_record(new_document(MINISTRY, [PROVINCE], s), keys) for s in subjects]
    with store.open() as archive:
        archive.store([_entry(v) for v in values])
        first, cursor = archive.search(Search(text="ke hoach", limit=1))
        assert [e.subject for e in first] == [subjects[0]] and cursor is not None
        rest, _ = archive.search(Search(text="ke hoach", limit=1, cursor=cursor))
        assert [e.subject for e in rest] == [subjects[2]]
        assert archive.search(Search(text="ke hoach", limit=1, cursor=rest[-1].seq)) == ([], None)
        assert len(archive.search(Search(sender=MINISTRY, recipient=PROVINCE))[0]) == 3
        assert archive.search(Search(sender=PROVINCE))[0] == []


def test_the_schema_is_versioned_and_migrated_once(store: Store) -> None:
    with store.open() as archive:
        assert archive.schema_version == 3
    with store.open() as again:
        assert again.schema_version == 3


def test_an_archive_made_before_versions_is_migrated_and_searchable(
    tmp_path: Path, keys: list[SigningKey]
) -> None:
    # An SQLite archive as the versions before schema_version wrote it: no version table,
    # no folded subjects. Opening it for writing applies what it lacks, once.
    folder = tmp_path / "old"
    with SqliteArchive(folder / ARCHIVE_FILE) as archive:
        value = document_record(new_document(MINISTRY, [PROVINCE], "Kế hoạch cũ"), keys)
        archive.store([_entry(value)])
    with sqlite3.connect(folder / ARCHIVE_FILE) as db:
        db.execute("DROP TABLE schema_version")
        db.execute("ALTER TABLE entries DROP COLUMN subject_fold")
    with SqliteArchive(folder / ARCHIVE_FILE) as archive:
        assert archive.schema_version == 3
        assert [e.subject for e in archive.search(Search(text="ke hoach cu"))[0]] == ["Kế hoạch cũ"]


def test_a_read_only_archive_refuses_every_write(store: Store) -> None:
    from bus.store.archive import PostgresArchive

    store.open().close()
    if store.database is None:
        reader: SqliteArchive | PostgresArchive = SqliteArchive(
            store.data_dir / ARCHIVE_FILE, read_only=True
        )
    else:
        reader = PostgresArchive(store.database, BlobStore(store.data_dir), read_only=True)
    with reader, pytest.raises(Misconfigured, match="refused"):
        reader.add_checkpoint(Checkpoint("x", 1, b"\x00" * 32), b"note", datetime.now(UTC))


# What verify-archive finds, on either store.


def test_an_untouched_archive_is_clean(audited: Store, pki: Pki) -> None:
    report = _audit(audited, pki)
    assert report.clean, report.findings
    assert [c.size for c in report.checkpoints] == [3, 5, 7]
    assert all(c.signed_ok for c in report.checkpoints)


def test_one_edited_byte_is_found_and_named(audited: Store, pki: Pki) -> None:
    event = _event(audited, 4)
    event[len(event) // 2] ^= 0x01
    audited.tamper("UPDATE entries SET event = ? WHERE seq = 4", (bytes(event),))
    kinds = _kinds(_audit(audited, pki))
    assert ("bytes changed", "row 4") in kinds and ("entry changed", "row 4") in kinds
    assert ("checkpoint not reproduced", "checkpoint of size 5") in kinds


def test_an_edit_that_also_rewrites_digest_and_log_is_caught_by_the_signed_checkpoints(
    audited: Store, pki: Pki
) -> None:
    event = _event(audited, 2)
    event[-10] ^= 0x01
    audited.tamper(
        "UPDATE entries SET event = ?, digest = ? WHERE seq = 2",
        (bytes(event), hashlib.sha256(event).hexdigest()),
    )
    audited.tamper(
        "UPDATE log_nodes SET hash = ? WHERE level = 0 AND idx = 1", (leaf_hash(bytes(event)),)
    )
    kinds = _kinds(_audit(audited, pki))
    assert ("checkpoint not reproduced", "checkpoint of size 3") in kinds


def test_a_deleted_row_is_found_and_named(audited: Store, pki: Pki) -> None:
    audited.tamper("DELETE FROM entries WHERE seq = 2")
    assert ("row removed", "log index 1") in _kinds(_audit(audited, pki))


def test_two_swapped_rows_are_found_and_named(audited: Store, pki: Pki) -> None:
    with audited.open(create=False) as archive:
        a, b = (next(e for e in archive.entries() if e.seq == seq) for seq in (2, 6))
    update = "UPDATE entries SET document_id = ?, digest = ?, event = ? WHERE seq = ?"
    audited.tamper("UPDATE entries SET document_id = 'moving', digest = '' WHERE seq = 2")
    audited.tamper(update, (a.document_id, a.digest, a.event, 6))
    audited.tamper(update, (b.document_id, b.digest, b.event, 2))
    kinds = _kinds(_audit(audited, pki))
    assert ("entry changed", "row 2") in kinds and ("entry changed", "row 6") in kinds


def test_two_rows_swapped_in_the_log_are_named_as_reordered(audited: Store, pki: Pki) -> None:
    audited.tamper("UPDATE entries SET log_index = -1 WHERE seq = 2")
    audited.tamper("UPDATE entries SET log_index = 1 WHERE seq = 6")
    audited.tamper("UPDATE entries SET log_index = 5 WHERE seq = 2")
    kinds = _kinds(_audit(audited, pki))
    assert ("rows reordered", "rows 2 and 3") in kinds and ("entry changed", "row 6") in kinds


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("subject", "Văn bản đã sửa"),
        ("sender", "000.00.00.H41"),
        ("recipients", '["000.00.00.H06"]'),
        ("received_at", "2020-01-01T00:00:00+00:00"),
    ],
)
def test_an_edited_column_is_found_though_the_bytes_are_intact(
    audited: Store, pki: Pki, column: str, value: str
) -> None:
    audited.tamper(f"UPDATE entries SET {column} = ? WHERE seq = 3", (value,))
    report = _audit(audited, pki)
    assert ("column edited", "row 3") in _kinds(report)
    assert any(column in f.detail for f in report.findings)


def test_a_swapped_conflict_flag_is_found(audited: Store, pki: Pki) -> None:
    audited.tamper("UPDATE entries SET conflict = 1 WHERE seq = 2")
    assert ("conflict flag edited", "row 2") in _kinds(_audit(audited, pki))


def test_an_appended_row_is_not_covered_by_any_checkpoint(
    audited: Store, pki: Pki, keys: list[SigningKey]
) -> None:
    # The attacker appends a validly signed document with its log nodes: no signed
    # checkpoint covers it, so the archive is not clean.
    value = document_record(new_document(MINISTRY, [PROVINCE], "Văn bản chèn thêm"), keys)
    with audited.open(create=False) as archive:
        archive.store([_entry(value)])
        assert archive.log_size() == 8
    assert ("not covered by a checkpoint", "log indexes 7–7") in _kinds(_audit(audited, pki))


def test_a_forged_checkpoint_is_found(
    audited: Store, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    rogue = DevPki(tmp_path_factory.mktemp("rogue"))
    rogue.init()
    impostor = SigningKey.load(
        Role.SERVICE, *rogue.issue("docbus.archiver", CertRole.SERVICE, KeyAlgorithm.ED25519)
    )
    forged = Checkpoint("docbus.archiver", 5, b"\x00" * 32)
    audited.tamper(
        "UPDATE checkpoints SET signed = ? WHERE size = 5", (sign_checkpoint(forged, impostor),)
    )
    report = _audit(audited, pki)
    assert ("forged checkpoint", "checkpoint of size 5") in _kinds(report)
    assert [c.signed_ok for c in report.checkpoints] == [True, False, True]


def test_a_checkpoint_signed_with_a_pinned_archivers_other_key_is_forged(
    audited: Store, pki: Pki
) -> None:
    # A genuine archiver certificate, but not the one this log's key is bound to.
    other = pki.key("docbus.archiver", Role.SERVICE)
    forged = Checkpoint("docbus.archiver", 7, b"\x07" * 32)
    audited.tamper(
        "UPDATE checkpoints SET signed = ? WHERE size = 7", (sign_checkpoint(forged, other),)
    )
    assert ("forged checkpoint", "checkpoint of size 7") in _kinds(_audit(audited, pki))


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)  # SQLite's reader is mode=ro
def test_the_archive_apis_database_role_can_read_and_cannot_write(audited: Store) -> None:
    # Read-only by construction on PostgreSQL: the API connects as a role that was never
    # granted a write, so even a statement sent past the API's code is refused.
    assert audited.database is not None
    from bus.store.archive import PostgresArchive
    from bus.store.postgres import grant_reader

    role = f"docbus_reader_{secrets.token_hex(4)}"
    grant_reader(audited.database, role)
    grant_reader(audited.database, role)  # again: nothing changes, nothing fails
    reader_url = urlunsplit(urlsplit(audited.database)._replace(netloc=f"{role}@127.0.0.1:5432"))
    try:
        with PostgresArchive(reader_url, BlobStore(audited.data_dir), read_only=True) as reader:
            assert reader.count() == 7 and len(reader.search(Search(text="van ban"))[0]) == 7
        with psycopg.connect(reader_url, autocommit=True) as raw:
            for statement in (
                "DELETE FROM entries",
                "UPDATE checkpoints SET signed = ''",
                "INSERT INTO log_nodes VALUES (0, 99, '')",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    raw.execute(statement)  # type: ignore[arg-type]
            # Nor can it take the archivers' lock and stall the log's appends.
            with pytest.raises(psycopg.errors.InsufficientPrivilege), raw.transaction():
                raw.execute("LOCK TABLE log_nodes IN EXCLUSIVE MODE")
    finally:
        with psycopg.connect(audited.database, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')  # type: ignore[arg-type]
        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{role}"')  # type: ignore[arg-type]


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
def test_a_readers_password_never_reaches_the_server_in_clear(
    audited: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With log_statement=ddl the server would record an ALTER ROLE's text: it must hold a
    # SCRAM verifier, never the password. A spy records every statement grant_reader sends.
    assert audited.database is not None
    from bus.store.postgres import grant_reader

    sent: list[str] = []
    execute = psycopg.Connection.execute

    def spy(self: psycopg.Connection, query: object, *args: object, **kwargs: object) -> object:
        sent.append(query.as_string(self) if hasattr(query, "as_string") else str(query))
        return execute(self, query, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(psycopg.Connection, "execute", spy)
    role, password = f"docbus_reader_{secrets.token_hex(4)}", "correct horse ¡battery!"
    try:
        grant_reader(audited.database, role, password)
        monkeypatch.undo()
        assert sent and not any(password in statement for statement in sent)
        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            row = admin.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
            ).fetchone()
        assert row is not None
        # RFC 5803's form; the keys derive from this very password (RFC 5802).
        scheme, iterations_salt, keys = row[0].split("$")
        iterations, salt = iterations_salt.split(":")
        stored_key, _server_key = keys.split(":")
        assert scheme == "SCRAM-SHA-256"
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        assert base64.b64decode(stored_key) == hashlib.sha256(client_key).digest()
    finally:
        with psycopg.connect(audited.database, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')  # type: ignore[arg-type]
        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{role}"')  # type: ignore[arg-type]


def test_verify_archive_from_the_command_line_on_either_store_says_how_far_it_got(
    audited: Store, pki: Pki
) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bus", "audit", "verify-archive"),
            *(*audited.options(), "--trust", str(pki.dev.trust_dir)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DOCBUS_BOOTSTRAP": ""},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # No terminal: progress comes as JSON lines on stderr, the last one when it is done.
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    last = [line for line in lines if line.get("event") == "progress"][-1]
    assert last["finished"] and last["done"] == last["total"] == 7
    with audited.open(create=False) as archive:
        _, clean, report = archive.latest_audit() or (None, False, "")
    assert clean and json.loads(report)["counts"]["entries"] == 7  # kept for the audit page
