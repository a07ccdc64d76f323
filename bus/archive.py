"""The archive store (DESIGN §6): each verified document once, conflicts kept and flagged.

SQLite in WAL mode; one transaction per consumer batch, so one fsync per batch rather
than per document.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from bus.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    document_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    digest TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    subject TEXT NOT NULL,
    confidentiality TEXT NOT NULL,
    topic TEXT NOT NULL,
    received_at TEXT NOT NULL,
    archived_at TEXT NOT NULL,
    conflict INTEGER NOT NULL DEFAULT 0,
    event BLOB NOT NULL,
    UNIQUE (document_id, revision, digest)
);
CREATE INDEX IF NOT EXISTS entries_document ON entries (document_id, revision);
"""


class Stored(StrEnum):
    """What storing an entry did."""

    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class NewEntry:
    document_id: str
    revision: int
    digest: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    confidentiality: str
    topic: str
    received_at: datetime
    event: bytes


@dataclass(frozen=True)
class Entry(NewEntry):
    """A stored entry: what was stored, its place in the archive and whether it conflicts."""

    seq: int
    archived_at: datetime
    conflict: bool


_COLUMNS = (
    "seq, document_id, revision, digest, sender, recipients, subject, confidentiality, topic, "
    "received_at, archived_at, conflict, event"
)


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(
        seq=row["seq"],
        document_id=row["document_id"],
        revision=row["revision"],
        digest=row["digest"],
        sender=row["sender"],
        recipients=tuple(json.loads(row["recipients"])),
        subject=row["subject"],
        confidentiality=row["confidentiality"],
        topic=row["topic"],
        received_at=datetime.fromisoformat(row["received_at"]),
        archived_at=datetime.fromisoformat(row["archived_at"]),
        conflict=bool(row["conflict"]),
        event=bytes(row["event"]),
    )


class Archive:
    """An SQLite archive file. Thread-safe: calls are serialised."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_database(path, SCHEMA, page_size=65536)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def store(self, entries: Sequence[NewEntry]) -> list[Stored]:
        """Store a batch in one transaction; re-delivery is a no-op, a changed digest a conflict."""
        now = datetime.now(UTC).isoformat()
        results = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for e in entries:
                    digests = {
                        r[0]: r[1]
                        for r in self._db.execute(
                            "SELECT digest, conflict FROM entries"
                            " WHERE document_id = ? AND revision = ?",
                            (e.document_id, e.revision),
                        )
                    }
                    if e.digest in digests:
                        results.append(Stored.CONFLICT if digests[e.digest] else Stored.DUPLICATE)
                        continue
                    conflict = bool(digests)
                    self._db.execute(
                        f"INSERT INTO entries ({_COLUMNS}) VALUES "
                        "(NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            e.document_id,
                            e.revision,
                            e.digest,
                            e.sender,
                            json.dumps(list(e.recipients)),
                            e.subject,
                            e.confidentiality,
                            e.topic,
                            e.received_at.isoformat(),
                            now,
                            int(conflict),
                            e.event,
                        ),
                    )
                    results.append(Stored.CONFLICT if conflict else Stored.NEW)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return results

    def entries(self, limit: int | None = None) -> list[Entry]:
        """Entries in archive order (oldest first)."""
        sql = f"SELECT {_COLUMNS} FROM entries ORDER BY seq"
        with self._lock:
            rows = self._db.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
            return [_entry(r) for r in rows]

    def find(self, document_id: str) -> list[Entry]:
        """Every stored entry of a document, all revisions, conflicts included."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE document_id = ? ORDER BY seq", (document_id,)
            )
            return [_entry(r) for r in rows]

    def count(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM entries").fetchone()
            return int(row[0])
