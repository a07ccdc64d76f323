"""The archive's schema, written once for both databases (:class:`~bus.store.database.Dialect`
spells each type), and the one migration that brings a database to its newest version."""

from __future__ import annotations

import unicodedata

from bus.store.database import Database

#: Schema version 2 folds subjects into a column (search with or without diacritics).
FOLDED_SUBJECTS = 2

ENTRIES = """CREATE TABLE IF NOT EXISTS entries (
    seq {seq},
    document_id TEXT NOT NULL,
    revision {bigint} NOT NULL,
    digest TEXT NOT NULL,
    payload_digest TEXT NOT NULL DEFAULT '',
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    subject TEXT NOT NULL,
    confidentiality TEXT NOT NULL,
    topic TEXT NOT NULL,
    received_at TEXT NOT NULL,
    archived_at TEXT NOT NULL,
    conflict INTEGER NOT NULL DEFAULT 0,
    event {blob} NOT NULL,
    receipt {blob} NOT NULL DEFAULT {empty_blob},
    log_index {bigint} NOT NULL UNIQUE,
    UNIQUE (sender, document_id, revision, digest)
)"""
LOG_NODES = """CREATE TABLE IF NOT EXISTS log_nodes (
    level INTEGER NOT NULL,
    idx {bigint} NOT NULL,
    hash {blob} NOT NULL,
    PRIMARY KEY (level, idx)
){without_rowid}"""
CHECKPOINTS = """CREATE TABLE IF NOT EXISTS checkpoints (
    size {bigint} PRIMARY KEY,
    root {blob} NOT NULL,
    at TEXT NOT NULL,
    signed {blob} NOT NULL
)"""
LOG_KEYS = "CREATE TABLE IF NOT EXISTS log_keys (origin TEXT PRIMARY KEY, chain {blob} NOT NULL)"
#: What verify-archive found, for the audit page.
AUDITS = (
    "CREATE TABLE IF NOT EXISTS audits (at TEXT NOT NULL, clean INTEGER NOT NULL,"
    " report TEXT NOT NULL)"
)

#: The schema, one step per version: (version, statements), each applied once, in order.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            ENTRIES,
            "CREATE INDEX IF NOT EXISTS entries_document"
            " ON entries (sender, document_id, revision)",
            "CREATE INDEX IF NOT EXISTS entries_digest ON entries (digest)",
            LOG_NODES,
            CHECKPOINTS,
            LOG_KEYS,
        ),
    ),
    (FOLDED_SUBJECTS, ("ALTER TABLE entries ADD COLUMN subject_fold TEXT NOT NULL DEFAULT ''",)),
    (3, (AUDITS,)),
)


def fold(text: str | None) -> str:
    """``text`` lower-cased without diacritics: "Kế hoạch" and "ke hoach" meet."""
    if not text:
        return ""
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def migrate(db: Database) -> None:
    """Bring the schema to the newest version, each step once, in one transaction that
    archivers starting together take in turn."""
    with db.transaction(*db.dialect.migration_lock):
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = int(row[0]) if row is not None and row[0] is not None else 0
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                db.execute(db.dialect.ddl(statement))
            if version == FOLDED_SUBJECTS:
                rows = db.execute("SELECT seq, subject FROM entries").fetchall()
                db.executemany(
                    "UPDATE entries SET subject_fold = ? WHERE seq = ?",
                    [(fold(r[1]), r[0]) for r in rows],
                )
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))


def schema_version(db: Database) -> int:
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0])
