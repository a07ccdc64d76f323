"""The archive store (DESIGN §6): each verified document once, conflicts kept and flagged.

Every stored entry is also a leaf of the transparency log (RFC 6962 hashing over the
exact event bytes) kept beside it: ``log_nodes`` holds the hash of every perfect subtree,
so appending, roots and proofs cost O(log n) lookups however large the log grows.
SQLite in WAL mode; one transaction per consumer batch, so one fsync per batch rather
than per document.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from bus.store.sqlite import open_database
from bus.tlog.checkpoint import Checkpoint
from bus.tlog.merkle import completed_nodes, inclusion_proof, leaf_hash, root_hash
from bus.wire.codec import default_codec
from bus.wire.model import Document

ARCHIVE_FILE = "archive.sqlite"

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
    log_index INTEGER NOT NULL UNIQUE,
    UNIQUE (sender, document_id, revision, digest)
);
CREATE INDEX IF NOT EXISTS entries_document ON entries (sender, document_id, revision);
CREATE INDEX IF NOT EXISTS entries_digest ON entries (digest);
CREATE TABLE IF NOT EXISTS log_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    at TEXT NOT NULL,
    signed BLOB NOT NULL
);
"""


class Stored(StrEnum):
    """What storing an entry did."""

    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REFUSED = "refused"  # a revision that follows no earlier one of its sender


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
    #: Who may have sent the earlier revisions: the sender and its registry predecessors.
    originators: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        doc: Document,
        event: bytes,
        topic: str,
        received_at: datetime,
        originators: tuple[str, ...] = (),
    ) -> NewEntry:
        """The entry for ``event`` (whose payload is ``doc``); a sealed subject stays out."""
        return cls(
            document_id=doc.document_id,
            revision=doc.revision,
            digest=hashlib.sha256(event).hexdigest(),
            sender=doc.sender,
            recipients=doc.recipients,
            subject="" if doc.sealed else doc.subject,
            confidentiality=doc.confidentiality.value,
            topic=topic,
            received_at=received_at,
            event=event,
            originators=originators,
        )


@dataclass(frozen=True)
class Entry(NewEntry):
    """A stored entry: what was stored, its place in the archive and whether it conflicts."""

    seq: int = 0
    archived_at: datetime = datetime.min
    conflict: bool = False
    log_index: int = 0


@dataclass(frozen=True)
class StoredCheckpoint:
    checkpoint: Checkpoint
    signed: bytes


_COLUMNS = (
    "seq, document_id, revision, digest, sender, recipients, subject, confidentiality, topic, "
    "received_at, archived_at, conflict, event, log_index"
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
        log_index=row["log_index"],
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

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def store(self, entries: Sequence[NewEntry]) -> list[tuple[Stored, int]]:
        """Store a batch in one transaction; re-delivery is a no-op, a changed digest a conflict.

        Returns what happened to each entry and its log index (the existing one for a
        re-delivery). New entries and conflicts are appended to the log.
        """
        now = datetime.now(UTC).isoformat()
        results: list[tuple[Stored, int]] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for e in entries:
                    digests = {
                        r[0]: (r[1], r[2])
                        for r in self._db.execute(
                            "SELECT digest, conflict, log_index FROM entries"
                            " WHERE sender = ? AND document_id = ? AND revision = ?",
                            (e.sender, e.document_id, e.revision),
                        )
                    }
                    if e.digest in digests:
                        was_conflict, index = digests[e.digest]
                        results.append(
                            (Stored.CONFLICT if was_conflict else Stored.DUPLICATE, index)
                        )
                        continue
                    if not digests and not self._follows(e):
                        results.append((Stored.REFUSED, -1))
                        continue
                    conflict = bool(digests)
                    index = self._size()
                    self._db.executemany(
                        "INSERT INTO log_nodes VALUES (?, ?, ?)",
                        completed_nodes(index, leaf_hash(e.event), self._node),
                    )
                    self._db.execute(
                        f"INSERT INTO entries ({_COLUMNS}) VALUES "
                        "(NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                            index,
                        ),
                    )
                    results.append((Stored.CONFLICT if conflict else Stored.NEW, index))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return results

    def _follows(self, e: NewEntry) -> bool:
        """Revision 0, or a higher revision than any archived one of its sender (or the
        sender's predecessors): nobody revises or revokes another agency's document."""
        if e.revision == 0:
            return True
        senders = sorted({e.sender, *e.originators})
        marks = ", ".join("?" * len(senders))
        row = self._db.execute(
            "SELECT MAX(revision) FROM entries WHERE document_id = ? AND conflict = 0"
            f" AND sender IN ({marks})",
            (e.document_id, *senders),
        ).fetchone()
        return row[0] is not None and int(row[0]) < e.revision

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

    # The transparency log. The caller holds no lock: each method takes it.

    def _node(self, level: int, index: int) -> bytes:
        row = self._db.execute(
            "SELECT hash FROM log_nodes WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        if row is None:
            raise KeyError(f"log node ({level}, {index}) is missing")
        return bytes(row[0])

    def _size(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM log_nodes WHERE level = 0")
        return int(row.fetchone()[0])

    def log_size(self) -> int:
        with self._lock:
            return self._size()

    def root(self, size: int) -> bytes:
        with self._lock:
            return root_hash(self._node, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._lock:
            return inclusion_proof(self._node, index, size)

    def leaf_hashes(self) -> list[bytes]:
        """The log's stored leaf hashes, in log order."""
        with self._lock:
            rows = self._db.execute("SELECT hash FROM log_nodes WHERE level = 0 ORDER BY idx")
            return [bytes(r[0]) for r in rows]

    def add_checkpoint(self, checkpoint: Checkpoint, signed: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO checkpoints VALUES (?, ?, ?, ?)",
                (checkpoint.size, checkpoint.root, checkpoint.at.isoformat(), signed),
            )

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored signed checkpoint, smallest first (as stored: audits re-check them)."""
        with self._lock:
            rows = self._db.execute("SELECT size, signed FROM checkpoints ORDER BY size").fetchall()
        out = []
        for row in rows:
            event = default_codec().decode_event(bytes(row["signed"]))
            out.append(StoredCheckpoint(Checkpoint.parse(event.payload), bytes(row["signed"])))
        return out

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        with self._lock:
            row = self._db.execute(
                "SELECT signed FROM checkpoints ORDER BY size DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        signed = bytes(row["signed"])
        return StoredCheckpoint(
            Checkpoint.parse(default_codec().decode_event(signed).payload), signed
        )

    def by_digest(self, digest: str) -> Entry | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE digest = ?", (digest,)
            ).fetchone()
        return None if row is None else _entry(row)


def open_archive(data_dir: Path, create: bool = False) -> Archive:
    """The archive kept in ``data_dir``; FileNotFoundError unless it exists or ``create``."""
    path = data_dir / ARCHIVE_FILE
    if not create and not path.is_file():
        raise FileNotFoundError(f"no archive at {path}")
    return Archive(path)
