"""The archive (DESIGN §6): its documents, its transparency log and its audits, in SQLite or
PostgreSQL.

Each concern keeps its own tables (:mod:`bus.store.documents`, :mod:`bus.store.log`,
:mod:`bus.store.audits`); this module joins them, stores a consumer batch as one transaction
(one fsync per batch rather than per document) and opens the archive a service names.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import structlog

from bus.store.audits import AuditTables
from bus.store.blobs import BlobStore
from bus.store.database import Database, SqliteDatabase
from bus.store.documents import DocumentTables, NewEntry, Stored
from bus.store.log import LogTables, Signer, StoredCheckpoint
from bus.store.schema import schema_version
from bus.tlog.merkle import completed_nodes, leaf_hash
from bus.wire.errors import Unavailable

ARCHIVE_FILE = "archive.sqlite"

log = structlog.get_logger(__name__)


class Archive(DocumentTables, LogTables, AuditTables):
    """The archive, whatever database holds it. Thread-safe: calls are serialised.

    :param db: the database (:class:`~bus.store.database.SqliteDatabase`, or
        :class:`~bus.store.postgres.PostgresDatabase`).
    :param blobs: where blob-store attachments are copied (checked copies).
    :param read_only: never migrate nor write.
    """

    def __init__(self, db: Database, blobs: BlobStore, read_only: bool = False) -> None:
        super().__init__(db, read_only)
        #: What to call it in reports (a path, or a database URL without its password).
        self.name = db.name
        self.blobs = blobs
        if not read_only:
            try:  # the schema now, unless the database is not up yet: then at the first call
                with self._using():
                    pass
            except Unavailable as exc:
                log.warning(
                    "archive database unavailable; waiting", archive=self.name, error=str(exc)
                )

    @property
    def schema_version(self) -> int:
        with self._using():
            return schema_version(self._db)

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
        before it. Inside the append's turn (the dialect's append lock), so with several
        archivers each checkpoint's predecessor is the one signed just before it: published
        with a proof from it, the checkpoints form one chain a witness can follow."""
        fresh: StoredCheckpoint | None = None
        previous: StoredCheckpoint | None = None
        results: list[tuple[Stored, int]] = []
        with self._using():
            try:
                with self._db.transaction(*self._db.dialect.append_lock):
                    results, size = self._append(entries)
                    if sign is not None:
                        fresh, previous = self._sign_checkpoint(size, sign)
                self._cache(self._pending)
            finally:
                self._pending = {}
        return results, fresh, previous

    def _append(self, entries: Sequence[NewEntry]) -> tuple[list[tuple[Stored, int]], int]:
        """Each entry stored or found, new ones appended to the log (in the transaction);
        and the log's size after."""
        now = datetime.now(UTC).isoformat()
        results: list[tuple[Stored, int]] = []
        size = self._size()  # appends take turns (the append lock), so it grows only here
        for e in entries:
            rows = self._identity(e)
            digests = {r[0]: (r[1], r[2]) for r in rows}
            if e.digest in digests:
                was_conflict, index = digests[e.digest]
                results.append((Stored.CONFLICT if was_conflict else Stored.DUPLICATE, index))
                continue
            if not digests and not self._follows(e):
                results.append((Stored.REFUSED, -1))
                continue
            # Another envelope of the same signed document (signatures reordered, chains
            # trimmed) is the same document, never a conflict.
            conflict = bool(rows) and str(rows[0][3]) != e.payload_digest
            index, size = size, size + 1
            nodes = completed_nodes(index, leaf_hash(e.event), self._node)
            self._pending.update(((level, i), h) for level, i, h in nodes)
            self._insert(e, index, now, conflict)
            results.append((Stored.CONFLICT if conflict else Stored.NEW, index))
        # The batch's log nodes in one statement (readers of this transaction find them in
        # _pending meanwhile).
        written = [(level, i, h) for (level, i), h in self._pending.items()]
        if written:
            self._db.executemany("INSERT INTO log_nodes VALUES (?, ?, ?)", written)
        return results, size


class SqliteArchive(Archive):
    """An archive in one SQLite file (WAL), written by one process; its blobs beside it."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        blobs = BlobStore(path.parent / "blobs")
        super().__init__(SqliteDatabase(path, read_only), blobs, read_only)


class PostgresArchive(Archive):
    """An archive in a PostgreSQL database, shared by any number of archiver processes.

    Archivers run side by side as one consumer group over the delivery partitions; each
    batch is one transaction that first takes the append lock, so log indexes are assigned
    inside the transaction and the log stays one append-only sequence whoever writes it.
    Verification, the expensive part, runs in every archiver at once; only appends take turns.

    :param url: a libpq connection URL (``postgresql://user@host:5432/db``).
    :param read_only: every transaction is read-only.
    """

    def __init__(self, url: str, blobs: BlobStore, read_only: bool = False) -> None:
        from bus.store.postgres import PostgresDatabase  # psycopg only where it is used

        super().__init__(PostgresDatabase(url, read_only), blobs, read_only)


def open_archive(
    data_dir: Path | None, create: bool = False, database: str | None = None
) -> Archive:
    """The archive in PostgreSQL at ``database`` (its blobs in ``data_dir/blobs``), else the
    SQLite one kept in ``data_dir``; FileNotFoundError unless it exists or ``create``."""
    if database:
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
