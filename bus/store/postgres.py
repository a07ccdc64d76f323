"""The archive in PostgreSQL (DESIGN §6): several archiver processes on one database.

The logic is :class:`~bus.store.archive.Archive`'s, the same as SQLite's; this module gives
the connection, the dialect and the schema. Archivers run side by side as one consumer group
over the delivery partitions; each batch is one transaction that first locks the log's
table (EXCLUSIVE: readers go on reading), so log indexes are assigned inside the
transaction and the log stays one append-only sequence whoever writes it. Verification,
the expensive part, runs in every archiver at once; only the appends take turns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import RowMaker

from bus.store.archive import AUDITS_TABLE, FOLDED_SUBJECTS, Archive, Cursor
from bus.store.blobs import BlobStore

#: The advisory lock archivers take to migrate the schema (any fixed number: "docbus").
_LOG_LOCK = int.from_bytes(b"docbus", "big")

#: PostgreSQL's schema, by version: the same tables and versions as SQLite's.
POSTGRES_MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE IF NOT EXISTS entries (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id TEXT NOT NULL,
    revision BIGINT NOT NULL,
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
    event BYTEA NOT NULL,
    receipt BYTEA NOT NULL DEFAULT '',
    log_index BIGINT NOT NULL UNIQUE,
    UNIQUE (sender, document_id, revision, digest)
)""",
            "CREATE INDEX IF NOT EXISTS entries_document"
            " ON entries (sender, document_id, revision)",
            "CREATE INDEX IF NOT EXISTS entries_digest ON entries (digest)",
            """CREATE TABLE IF NOT EXISTS log_nodes (
    level INTEGER NOT NULL,
    idx BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
)""",
            """CREATE TABLE IF NOT EXISTS checkpoints (
    size BIGINT PRIMARY KEY,
    root BYTEA NOT NULL,
    at TEXT NOT NULL,
    signed BYTEA NOT NULL
)""",
            "CREATE TABLE IF NOT EXISTS log_keys (origin TEXT PRIMARY KEY, chain BYTEA NOT NULL)",
        ),
    ),
    (FOLDED_SUBJECTS, ("ALTER TABLE entries ADD COLUMN subject_fold TEXT NOT NULL DEFAULT ''",)),
    (3, (AUDITS_TABLE,)),
)


class _Row(tuple[Any, ...]):
    """A row read by position or by column name, as sqlite3.Row is."""

    names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self.names[key])
        return super().__getitem__(key)


def _rows(cursor: Any) -> RowMaker[_Row]:
    names = {c.name: i for i, c in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> _Row:
        row = _Row(bytes(v) if isinstance(v, memoryview) else v for v in values)
        row.names = names
        return row

    return make


def redacted(url: str) -> str:
    """A database named for reports, logs and pages: user, host, port and database only,
    whatever form the connection string takes (a URL, its query, key=value pairs)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "<database>"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


class PostgresArchive(Archive):
    """An archive in a PostgreSQL database, shared by any number of archiver processes.

    :param url: a libpq connection URL (``postgresql://user@host:5432/db``).
    :param blobs: where blob-store attachments are copied (a folder).
    :param read_only: every transaction of the connection is read-only.
    """

    MIGRATIONS = POSTGRES_MIGRATIONS

    def __init__(self, url: str, blobs: BlobStore, read_only: bool = False) -> None:
        options = "-c default_transaction_read_only=on" if read_only else ""
        try:
            db = psycopg.connect(url, autocommit=True, row_factory=_rows, options=options)
        except (psycopg.ProgrammingError, psycopg.InterfaceError):
            # libpq's message repeats the string it could not parse, password and all.
            raise ValueError("the database URL is not a valid connection string") from None
        super().__init__(redacted(url), blobs, db)
        if not read_only:
            self._migrate()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _exec(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        return self._db.execute(self._sql(sql), params or None)  # type: ignore[arg-type]

    def _exec_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with self._db.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.executemany(self._sql(sql), rows)

    def _begin(self) -> None:
        # A table lock that only a writer may take: EXCLUSIVE needs UPDATE rights, so the
        # read-only role cannot hold it (an advisory lock anyone can take, and keep), and
        # it lets readers read meanwhile.
        self._exec("BEGIN")
        self._exec("LOCK TABLE log_nodes IN EXCLUSIVE MODE")

    def _begin_migration(self) -> None:
        # Before the tables exist: archivers starting together migrate one at a time.
        self._exec("BEGIN")
        self._exec("SELECT pg_advisory_xact_lock(?)", (_LOG_LOCK,))


def grant_reader(url: str, role: str, password: str | None = None) -> None:
    """Make ``role`` a login role that may read the archive at ``url`` and nothing else:
    SELECT on its tables, now and after later migrations, and no right to write. The
    archive API connects as it, so it is read-only in the database's own terms."""
    if not _ROLE.fullmatch(role):
        raise ValueError(f"{role!r} is not a role name (letters, digits, _; up to 63)")
    name = sql.Identifier(role)
    with psycopg.connect(url, autocommit=True) as db:
        exists = db.execute(
            "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = %s",
            (role,),
        ).fetchone()
        if exists is not None and exists[0]:
            raise ValueError(f"{role} is a privileged role: a reader must be able to do nothing")
        if exists is None:
            db.execute(sql.SQL("CREATE ROLE {} LOGIN NOINHERIT").format(name))
        if password is not None:
            # Hashed here (libpq's SCRAM-SHA-256), so the password never crosses the wire
            # nor lands in a statement log; the server keeps the verifier as given.
            verifier = db.pgconn.encrypt_password(
                password.encode(), role.encode(), b"scram-sha-256"
            ).decode()
            db.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(name, sql.Literal(verifier)))
        database = db.execute("SELECT current_database()").fetchone()
        assert database is not None
        db.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database[0]), name)
        )
        db.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(name))
        db.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(name))
        db.execute(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {}"
            ).format(name)
        )


_ROLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
