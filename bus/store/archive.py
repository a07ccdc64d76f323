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
import threading
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, Self

from bus.store.blobs import BlobStore
from bus.store.sqlite import open_database, open_read_only
from bus.tlog.checkpoint import Checkpoint, note_text
from bus.tlog.merkle import (
    completed_nodes,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_hash,
)
from bus.wire.codec import default_codec
from bus.wire.model import Document

ARCHIVE_FILE = "archive.sqlite"
#: Log nodes kept in memory: a perfect subtree's hash never changes once written, and every
#: inclusion proof of a batch reads the same upper nodes.
_NODE_CACHE = 1 << 16

#: Schema version 2 folds subjects into a column (search with or without diacritics).
FOLDED_SUBJECTS = 2

#: Version 3 keeps what verify-archive found, for the audit page (either dialect).
AUDITS_TABLE = (
    "CREATE TABLE IF NOT EXISTS audits (at TEXT NOT NULL, clean INTEGER NOT NULL,"
    " report TEXT NOT NULL)"
)

#: SQLite's schema, by version (see :attr:`Archive.MIGRATIONS`).
SQLITE_MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    document_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
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
    event BLOB NOT NULL,
    receipt BLOB NOT NULL DEFAULT x'',
    log_index INTEGER NOT NULL UNIQUE,
    UNIQUE (sender, document_id, revision, digest)
)""",
            "CREATE INDEX IF NOT EXISTS entries_document"
            " ON entries (sender, document_id, revision)",
            "CREATE INDEX IF NOT EXISTS entries_digest ON entries (digest)",
            """CREATE TABLE IF NOT EXISTS log_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID""",
            """CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    at TEXT NOT NULL,
    signed BLOB NOT NULL
)""",
            "CREATE TABLE IF NOT EXISTS log_keys (origin TEXT PRIMARY KEY, chain BLOB NOT NULL)",
        ),
    ),
    (FOLDED_SUBJECTS, ("ALTER TABLE entries ADD COLUMN subject_fold TEXT NOT NULL DEFAULT ''",)),
    (3, (AUDITS_TABLE,)),
)


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Db(Protocol):
    """A DB-API connection as both stores use it (sqlite3's and psycopg's)."""

    def execute(self, sql: str, params: Sequence[object] = ...) -> Cursor: ...

    def close(self) -> None: ...


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
    payload_digest: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    confidentiality: str
    topic: str
    received_at: datetime
    event: bytes
    #: The gateway's signed receipt (its DELIVERED status for these bytes).
    receipt: bytes = b""
    #: Who may have sent the earlier revisions: the sender and its registry predecessors.
    originators: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        doc: Document,
        event: bytes,
        topic: str,
        received_at: datetime,
        receipt: bytes = b"",
        originators: tuple[str, ...] = (),
        payload: bytes | None = None,
    ) -> NewEntry:
        """The entry for ``event`` (whose payload is ``doc``, whose signed payload bytes are
        ``payload`` when the caller has them); a sealed subject stays out."""
        return cls(
            document_id=doc.document_id,
            revision=doc.revision,
            digest=hashlib.sha256(event).hexdigest(),
            payload_digest=hashlib.sha256(
                default_codec().decode_event(event).payload if payload is None else payload
            ).hexdigest(),
            sender=doc.sender,
            recipients=doc.recipients,
            subject="" if doc.sealed else doc.subject,
            confidentiality=doc.confidentiality.value,
            topic=topic,
            received_at=received_at,
            event=event,
            receipt=receipt,
            originators=originators,
        )


@dataclass(frozen=True)
class Entry(NewEntry):
    """A stored entry: what was stored, its place in the archive and whether it conflicts."""

    seq: int = 0
    archived_at: datetime = datetime.min
    conflict: bool = False
    log_index: int = 0


#: Signs a checkpoint of the log at (size, root): the checkpoint and its note.
Signer = Callable[[int, bytes], tuple[Checkpoint, bytes]]


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint as stored: the note exactly as signed and published, and when."""

    checkpoint: Checkpoint
    signed: bytes
    at: datetime


_INSERTED = (
    "document_id, revision, digest, payload_digest, sender, recipients, subject, "
    "confidentiality, topic, received_at, archived_at, conflict, event, receipt, log_index, "
    "subject_fold"
)
_COLUMNS = (
    "seq, document_id, revision, digest, payload_digest, sender, recipients, subject, "
    "confidentiality, topic, received_at, archived_at, conflict, event, receipt, log_index"
)


def fold(text: str | None) -> str:
    """``text`` lower-cased without diacritics: "Kế hoạch" and "ke hoach" meet."""
    if not text:
        return ""
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _code_number(entry: Entry) -> str | None:
    """A document's code number, from its record (the archive keeps no column for it)."""
    codec = default_codec()
    return codec.decode_document(codec.decode_event(entry.event).payload).code_number


@dataclass(frozen=True)
class Search:
    """What the archive API searches by (DESIGN §12); ``cursor`` is the last seq seen."""

    sender: str | None = None
    recipient: str | None = None
    received_from: datetime | None = None
    received_to: datetime | None = None
    code_number: str | None = None
    text: str | None = None
    cursor: int = 0
    limit: int = 50


def _entry(row: Any) -> Entry:
    return Entry(
        seq=row["seq"],
        document_id=row["document_id"],
        revision=row["revision"],
        digest=row["digest"],
        payload_digest=row["payload_digest"],
        sender=row["sender"],
        recipients=tuple(json.loads(row["recipients"])),
        subject=row["subject"],
        confidentiality=row["confidentiality"],
        topic=row["topic"],
        received_at=datetime.fromisoformat(row["received_at"]),
        archived_at=datetime.fromisoformat(row["archived_at"]),
        conflict=bool(row["conflict"]),
        event=bytes(row["event"]),
        receipt=bytes(row["receipt"]),
        log_index=row["log_index"],
    )


class Archive:
    """The archive, whatever holds it: the logic of storing, the log and the queries, over
    one database connection (:class:`SqliteArchive`, :class:`~bus.store.postgres.PostgresArchive`).

    Thread-safe: calls are serialised. Subclasses give the connection, how a write begins
    (one writer at a time appends to the log) and their dialect's schema migrations.
    """

    #: The schema, one step per version: (version, statements). Applied in order on open,
    #: each once; the version reached is kept in ``schema_version``.
    MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = ()

    def __init__(self, name: str, blobs: BlobStore, db: Db) -> None:
        #: What to call it in reports (a path, or a database URL without its password).
        self.name = name
        #: Blob-store attachments (checked copies), kept in a folder beside the database.
        self.blobs = blobs
        self._lock = threading.Lock()
        self._db = db
        self._nodes: dict[tuple[int, int], bytes] = {}
        #: Nodes written by the transaction in progress: cached only once it commits.
        self._pending: dict[tuple[int, int], bytes] = {}

    def _sql(self, sql: str) -> str:
        """A statement written with ``?`` placeholders, in this database's dialect."""
        return sql

    def _exec(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        return self._db.execute(self._sql(sql), params)

    def _exec_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        raise NotImplementedError

    def _begin(self) -> None:
        """Begin a write transaction that no other writer of the log runs beside."""
        raise NotImplementedError

    def _begin_migration(self) -> None:
        """Begin the transaction that migrates the schema (the tables may not exist yet)."""
        self._begin()

    def _migrate(self) -> None:
        """Bring the schema to the newest version, each step once, in one transaction."""
        with self._lock:
            self._begin_migration()
            try:
                self._exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = self._exec("SELECT MAX(version) FROM schema_version").fetchone()
                current = int(row[0]) if row is not None and row[0] is not None else 0
                for version, statements in self.MIGRATIONS:
                    if version <= current:
                        continue
                    for statement in statements:
                        self._exec(statement)
                    if version == FOLDED_SUBJECTS:
                        self._fold_subjects()
                    self._exec("INSERT INTO schema_version (version) VALUES (?)", (version,))
                self._exec("COMMIT")
            except BaseException:
                self._exec("ROLLBACK")
                raise

    def _fold_subjects(self) -> None:
        rows = self._exec("SELECT seq, subject FROM entries").fetchall()
        self._exec_many(
            "UPDATE entries SET subject_fold = ? WHERE seq = ?",
            [(fold(r[1]), r[0]) for r in rows],
        )

    @property
    def schema_version(self) -> int:
        with self._lock:
            row = self._exec("SELECT MAX(version) FROM schema_version").fetchone()
            return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def store(self, entries: Sequence[NewEntry]) -> list[tuple[Stored, int]]:
        """Store a batch in one transaction; re-delivery is a no-op, a changed digest a conflict.

        Returns what happened to each entry and its log index (the existing one for a
        re-delivery). New entries and conflicts are appended to the log.
        """
        return self.store_signed(entries, None)[0]

    def store_signed(
        self, entries: Sequence[NewEntry], sign: Signer | None
    ) -> tuple[list[tuple[Stored, int]], StoredCheckpoint | None, StoredCheckpoint | None]:
        """:meth:`store`, and in the same transaction, when the log grew, a checkpoint of it
        signed by ``sign`` (size, root → checkpoint and its note); also the checkpoint
        before it. Inside the append's turn (``_begin``), so with several archivers each
        checkpoint's predecessor is the one signed just before it: published with a proof
        from it, the checkpoints form one chain a witness can follow."""
        now = datetime.now(UTC).isoformat()
        fresh: StoredCheckpoint | None = None
        previous: StoredCheckpoint | None = None
        results: list[tuple[Stored, int]] = []
        with self._lock:
            self._begin()
            try:
                size = self._size()  # appends take turns (_begin), so it grows only here
                for e in entries:
                    # Every row of the identity, oldest first: the first is the original.
                    rows = self._exec(
                        "SELECT digest, conflict, log_index, payload_digest FROM entries"
                        " WHERE sender = ? AND document_id = ? AND revision = ? ORDER BY seq",
                        (e.sender, e.document_id, e.revision),
                    ).fetchall()
                    digests = {r[0]: (r[1], r[2]) for r in rows}
                    if e.digest in digests:
                        was_conflict, index = digests[e.digest]
                        results.append(
                            (Stored.CONFLICT if was_conflict else Stored.DUPLICATE, index)
                        )
                        continue
                    if not digests and not self._follows(e):
                        results.append((Stored.REFUSED, -1))
                        continue
                    # Another envelope of the same signed document (signatures reordered,
                    # chains trimmed) is the same document, never a conflict.
                    conflict = bool(rows) and str(rows[0][3]) != e.payload_digest
                    index, size = size, size + 1
                    nodes = completed_nodes(index, leaf_hash(e.event), self._node)
                    self._pending.update(((level, i), h) for level, i, h in nodes)
                    self._exec(
                        f"INSERT INTO entries ({_INSERTED}) VALUES "
                        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            e.document_id,
                            e.revision,
                            e.digest,
                            e.payload_digest,
                            e.sender,
                            json.dumps(list(e.recipients)),
                            e.subject,
                            e.confidentiality,
                            e.topic,
                            e.received_at.isoformat(),
                            now,
                            int(conflict),
                            e.event,
                            e.receipt,
                            index,
                            fold(e.subject),
                        ),
                    )
                    results.append((Stored.CONFLICT if conflict else Stored.NEW, index))
                # The batch's log nodes in one statement (readers of this transaction find
                # them in _pending meanwhile).
                written = [(level, i, h) for (level, i), h in self._pending.items()]
                if written:
                    self._exec_many("INSERT INTO log_nodes VALUES (?, ?, ?)", written)
                if sign is not None:
                    fresh, previous = self._sign_checkpoint(size, sign)
                self._exec("COMMIT")
                self._cache(self._pending)
            except BaseException:
                self._exec("ROLLBACK")
                raise
            finally:
                self._pending = {}
        return results, fresh, previous

    def _sign_checkpoint(
        self, size: int, sign: Signer
    ) -> tuple[StoredCheckpoint | None, StoredCheckpoint | None]:
        """A new signed checkpoint at ``size`` if the log outgrew the latest (in the
        transaction, lock held); and the latest before it."""
        row = self._exec("SELECT signed, at FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        previous = None if row is None else _stored(row)
        if size == 0 or (previous is not None and previous.checkpoint.size >= size):
            return None, previous
        checkpoint, signed = sign(size, root_hash(self._node, size))
        at = datetime.now(UTC)
        self._exec(
            "INSERT INTO checkpoints (size, root, at, signed) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (checkpoint.size, checkpoint.root, at.isoformat(), signed),
        )
        return StoredCheckpoint(checkpoint, signed, at), previous

    def _follows(self, e: NewEntry) -> bool:
        """Revision 0, or a higher revision than any archived one of its sender (or the
        sender's predecessors): nobody revises or revokes another agency's document."""
        if e.revision == 0:
            return True
        senders = sorted({e.sender, *e.originators})
        marks = ", ".join("?" * len(senders))
        row = self._exec(
            "SELECT MAX(revision) FROM entries WHERE document_id = ? AND conflict = 0"
            f" AND sender IN ({marks})",
            (e.document_id, *senders),
        ).fetchone()
        return row[0] is not None and int(row[0]) < e.revision

    def entries(self, limit: int | None = None) -> list[Entry]:
        """Entries in archive order (oldest first)."""
        sql = f"SELECT {_COLUMNS} FROM entries ORDER BY seq"
        with self._lock:
            rows = self._exec(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
            return [_entry(r) for r in rows]

    def stream(self, chunk: int = 1000) -> Iterator[Entry]:
        """Every entry in log order, read ``chunk`` rows at a time (bounded memory)."""
        after = -1
        while True:
            with self._lock:
                rows = self._exec(
                    f"SELECT {_COLUMNS} FROM entries WHERE log_index > ?"
                    " ORDER BY log_index LIMIT ?",
                    (after, chunk),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _entry(row)
            after = rows[-1]["log_index"]

    def order(self, chunk: int = 10000) -> Iterator[tuple[int, int]]:
        """(seq, log_index) of every row in archive order, ``chunk`` at a time."""
        after = 0
        while True:
            with self._lock:
                rows = self._exec(
                    "SELECT seq, log_index FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, chunk),
                ).fetchall()
            if not rows:
                return
            yield from ((int(r[0]), int(r[1])) for r in rows)
            after = rows[-1][0]

    def original_payload(self, sender: str, document_id: str, revision: int) -> str | None:
        """The payload digest of an identity's first row: what every later row must equal
        to be no conflict."""
        with self._lock:
            return self._original_payload(sender, document_id, revision)

    def _original_payload(self, sender: str, document_id: str, revision: int) -> str | None:
        row = self._exec(
            "SELECT payload_digest FROM entries WHERE sender = ? AND document_id = ?"
            " AND revision = ? ORDER BY seq LIMIT 1",
            (sender, document_id, revision),
        ).fetchone()
        return None if row is None else str(row[0])

    def leaf(self, index: int) -> bytes | None:
        """The stored leaf hash at ``index``, or None."""
        with self._lock:
            try:
                return self._node(0, index)
            except KeyError:
                return None

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """A consistency proof between two sizes, from the stored log nodes."""
        with self._lock:
            return consistency_proof(self._node, size1, size2)

    def find(self, document_id: str) -> list[Entry]:
        """Every stored entry of a document, all revisions, conflicts included."""
        with self._lock:
            rows = self._exec(
                f"SELECT {_COLUMNS} FROM entries WHERE document_id = ? ORDER BY seq", (document_id,)
            )
            return [_entry(r) for r in rows]

    def count(self) -> int:
        with self._lock:
            row = self._exec("SELECT count(*) FROM entries").fetchone()
            return int(row[0])

    # The transparency log. The caller holds no lock: each method takes it.

    def _node(self, level: int, index: int) -> bytes:
        key = (level, index)
        found = self._pending.get(key) or self._nodes.get(key)
        if found is not None:
            return found
        row = self._exec("SELECT hash FROM log_nodes WHERE level = ? AND idx = ?", key).fetchone()
        if row is None:
            raise KeyError(f"log node ({level}, {index}) is missing")
        found = bytes(row[0])
        if not self._pending:  # read outside a write: the stored node is committed
            self._cache({key: found})
        return found

    def _cache(self, nodes: dict[tuple[int, int], bytes]) -> None:
        if len(self._nodes) + len(nodes) > _NODE_CACHE:
            self._nodes.clear()
        self._nodes.update(nodes)

    def _size(self) -> int:
        row = self._exec("SELECT COALESCE(MAX(idx) + 1, 0) FROM log_nodes WHERE level = 0")
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
            rows = self._exec("SELECT hash FROM log_nodes WHERE level = 0 ORDER BY idx")
            return [bytes(r[0]) for r in rows]

    def add_checkpoint(self, checkpoint: Checkpoint, signed: bytes, at: datetime) -> None:
        with self._lock:
            self._exec(
                "INSERT INTO checkpoints (size, root, at, signed) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (checkpoint.size, checkpoint.root, at.isoformat(), signed),
            )

    def checkpoints(self) -> Iterator[StoredCheckpoint]:
        """Every stored signed checkpoint, smallest first (as stored: audits re-check them)."""
        with self._lock:
            sizes = [r[0] for r in self._exec("SELECT size FROM checkpoints ORDER BY size")]
        for size in sizes:  # one row at a time: memory stays bounded
            with self._lock:
                row = self._exec(
                    "SELECT signed, at FROM checkpoints WHERE size = ?", (size,)
                ).fetchone()
            if row is not None:
                yield _stored(row)

    def recent_checkpoints(self, limit: int) -> list[StoredCheckpoint]:
        """The ``limit`` largest stored checkpoints, largest first."""
        with self._lock:
            rows = self._exec(
                "SELECT signed, at FROM checkpoints ORDER BY size DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_stored(r) for r in rows]

    def covering_checkpoint(
        self, index: int
    ) -> tuple[StoredCheckpoint, StoredCheckpoint | None] | None:
        """The first checkpoint that covers log entry ``index`` (the one signed in the
        transaction that appended it), and the checkpoint just before that one."""
        with self._lock:
            row = self._exec(
                "SELECT signed, at FROM checkpoints WHERE size > ? ORDER BY size LIMIT 1",
                (index,),
            ).fetchone()
            if row is None:
                return None
            first = _stored(row)
            before = self._exec(
                "SELECT signed, at FROM checkpoints WHERE size < ? ORDER BY size DESC LIMIT 1",
                (first.checkpoint.size,),
            ).fetchone()
        return first, None if before is None else _stored(before)

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        with self._lock:
            row = self._exec(
                "SELECT signed, at FROM checkpoints ORDER BY size DESC LIMIT 1"
            ).fetchone()
        return None if row is None else _stored(row)

    def set_log_key(self, origin: str, chain: Sequence[bytes]) -> None:
        """Keep the certificate chain (DER, leaf first) whose key signs ``origin``'s notes."""
        with self._lock:
            self._exec(
                "INSERT INTO log_keys (origin, chain) VALUES (?, ?)"
                " ON CONFLICT (origin) DO UPDATE SET chain = excluded.chain",
                (origin, _pack(chain)),
            )

    def log_key(self, origin: str) -> list[bytes]:
        """The certificate chain that signs ``origin``'s checkpoints (empty if unknown)."""
        with self._lock:
            row = self._exec("SELECT chain FROM log_keys WHERE origin = ?", (origin,)).fetchone()
        return [] if row is None else _unpack(bytes(row[0]))

    def search(self, query: Search) -> tuple[list[Entry], int | None]:
        """Archived entries (no conflicts) matching ``query``, oldest first, and the cursor
        of the next page (None on the last). Subjects match with or without diacritics."""
        where, args = ["conflict = 0"], list[object]()
        if query.sender:
            where.append("sender = ?")
            args.append(query.sender)
        if query.recipient:
            where.append("recipients LIKE ? ESCAPE '\\'")
            args.append(f'%"{_like(query.recipient)}"%')
        if query.received_from:
            where.append("received_at >= ?")
            args.append(query.received_from.astimezone(UTC).isoformat())
        if query.received_to:
            where.append("received_at < ?")
            args.append(query.received_to.astimezone(UTC).isoformat())
        if query.text:
            where.append("subject_fold LIKE ? ESCAPE '\\'")
            args.append(f"%{_like(fold(query.text))}%")
        sql = (
            f"SELECT {_COLUMNS} FROM entries WHERE {' AND '.join(where)} AND seq > ?"
            " ORDER BY seq LIMIT ?"
        )
        found: list[Entry] = []
        after = query.cursor
        while True:
            with self._lock:
                rows = self._exec(sql, (*args, after, query.limit)).fetchall()
            if not rows:
                return found, None
            for row in rows:
                entry = _entry(row)
                after = entry.seq
                if query.code_number is None or _code_number(entry) == query.code_number:
                    found.append(entry)
                    if len(found) == query.limit:
                        return found, entry.seq

    def conflicts(self, limit: int = 100) -> list[Entry]:
        """The newest rows flagged as conflicts (other bytes under an archived identity)."""
        with self._lock:
            rows = self._exec(
                f"SELECT {_COLUMNS} FROM entries WHERE conflict = 1 ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [_entry(r) for r in rows]

    def add_audit(self, at: datetime, clean: bool, report: str) -> None:
        """Keep what a verify-archive run found (its JSON report), for the audit page."""
        with self._lock:
            self._exec(
                "INSERT INTO audits (at, clean, report) VALUES (?, ?, ?)",
                (at.isoformat(), int(clean), report),
            )

    def latest_audit(self) -> tuple[datetime, bool, str] | None:
        """When the last verify-archive ran, whether it was clean, and its JSON report."""
        with self._lock:
            row = self._exec(
                "SELECT at, clean, report FROM audits ORDER BY at DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        return datetime.fromisoformat(row[0]), bool(row[1]), str(row[2])

    def by_digest(self, digest: str) -> Entry | None:
        with self._lock:
            row = self._exec(
                f"SELECT {_COLUMNS} FROM entries WHERE digest = ?", (digest,)
            ).fetchone()
        return None if row is None else _entry(row)


class SqliteArchive(Archive):
    """An archive in one SQLite file (WAL), written by one process; its blobs beside it."""

    MIGRATIONS = SQLITE_MIGRATIONS

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        db = open_read_only(path) if read_only else open_database(path, "", 65536)
        super().__init__(str(path), BlobStore(path.parent / "blobs"), db)
        if not read_only:
            self._migrate()

    def _exec_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        self._db.executemany(sql, rows)  # type: ignore[attr-defined]

    def _begin(self) -> None:
        self._exec("BEGIN IMMEDIATE")


def open_archive(
    data_dir: Path | None, create: bool = False, database: str | None = None
) -> Archive:
    """The archive in PostgreSQL at ``database`` (its blobs in ``data_dir/blobs``), else the
    SQLite one kept in ``data_dir``; FileNotFoundError unless it exists or ``create``."""
    if database:
        from bus.store.postgres import PostgresArchive  # psycopg only where it is used

        return PostgresArchive(database, archive_blobs(data_dir))
    if data_dir is None:
        raise FileNotFoundError("no archive: give a data folder or a database URL")
    path = data_dir / ARCHIVE_FILE
    if not create and not path.is_file():
        raise FileNotFoundError(f"no archive at {path}")
    return SqliteArchive(path)


def archive_blobs(data_dir: Path | None) -> BlobStore:
    """Where a PostgreSQL archive keeps its blob copies: ``data_dir/blobs`` (else
    ``./archive-blobs``, for commands that only read rows)."""
    return BlobStore(data_dir / "blobs" if data_dir else Path("archive-blobs"))


def _stored(row: Any) -> StoredCheckpoint:
    signed = bytes(row["signed"])
    return StoredCheckpoint(
        Checkpoint.parse(note_text(signed)), signed, datetime.fromisoformat(row["at"])
    )


def _pack(chain: Sequence[bytes]) -> bytes:
    return b"".join(len(c).to_bytes(4, "big") + c for c in chain)


def _unpack(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i + 4 <= len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return out
