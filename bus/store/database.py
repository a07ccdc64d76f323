"""One way to use either database: a dialect, a connection that comes back by itself, and
the driver's errors classified once, here, into the bus's error model (DESIGN §7).

Statements are written once, with ``?`` placeholders and ``{blob}``-style type names
(:class:`Dialect`), so each table's schema has one source. SQLite is one connection in WAL
mode; PostgreSQL is a pool (psycopg_pool) that checks a connection before lending it, so a
server restarted or a connection terminated costs one failed batch, retried, and nothing
more. A database that is not up yet is waited for by whoever uses it: every call raises
:class:`~bus.wire.errors.Unavailable` until it answers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.store.sqlite import open_database, open_read_only


class Rows:
    """The rows a statement returned, read at once (the connection goes back to its pool)."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


@dataclass(frozen=True)
class Dialect:
    """How one database spells what the other spells differently.

    :param placeholder: the driver's parameter mark (statements are written with ``?``).
    :param types: what ``{blob}``, ``{bigint}``, ``{seq}``, ``{without_rowid}`` and
        ``{empty_blob}`` mean in a schema template.
    :param append_lock: what begins a write that no other writer of the log runs beside.
    :param migration_lock: what begins a migration (the tables may not exist yet).
    """

    name: str
    placeholder: str
    types: Mapping[str, str]
    append_lock: tuple[str, ...] = ()
    migration_lock: tuple[str, ...] = ()

    def sql(self, statement: str) -> str:
        """A statement written with ``?`` placeholders, in this dialect."""
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def ddl(self, template: str) -> str:
        """A schema statement written once for both, in this dialect."""
        return template.format_map(self.types)


SQLITE = Dialect(
    "sqlite",
    "?",
    {
        "blob": "BLOB",
        "bigint": "INTEGER",
        "seq": "INTEGER PRIMARY KEY",
        "without_rowid": " WITHOUT ROWID",
        "empty_blob": "x''",
    },
)
POSTGRES = Dialect(
    "postgresql",
    "%s",
    {
        "blob": "BYTEA",
        "bigint": "BIGINT",
        "seq": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "without_rowid": "",
        "empty_blob": "''",
    },
    # A table lock that only a writer may take: EXCLUSIVE needs UPDATE rights, so the
    # read-only role cannot hold it (an advisory lock anyone can take, and keep), and it
    # lets readers read meanwhile.
    append_lock=("LOCK TABLE log_nodes IN EXCLUSIVE MODE",),
    # Before the tables exist: archivers starting together migrate one at a time.
    migration_lock=(f"SELECT pg_advisory_xact_lock({int.from_bytes(b'docbus', 'big')})",),
)


class Database(ABC):
    """A connection to the archive's database, whichever it is. Callers serialise calls.

    :param name: what to call it in reports (a path, or a URL without its password).
    """

    dialect: Dialect

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def execute(self, sql: str, params: Sequence[object] = ()) -> Rows:
        """Run one statement (``?`` placeholders) and return its rows."""

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """Run one statement for each of ``rows``."""

    @abstractmethod
    def transaction(self, *first: str) -> Any:
        """A context in which every statement is one transaction, begun with ``first``
        (a lock, say), committed on a clean exit and rolled back otherwise."""

    @abstractmethod
    def close(self) -> None: ...


class SqliteDatabase(Database):
    """One SQLite file (WAL, fsync on commit); read-only by construction with ``read_only``."""

    dialect = SQLITE

    def __init__(self, path: Path, read_only: bool = False) -> None:
        super().__init__(str(path))
        self.db = open_read_only(path) if read_only else open_database(path, "", 65536)

    def execute(self, sql: str, params: Sequence[object] = ()) -> Rows:
        return Rows(self.db.execute(sql, params).fetchall())

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        self.db.executemany(sql, rows)

    @contextmanager
    def transaction(self, *first: str) -> Iterator[None]:
        # One writer at a time: IMMEDIATE takes the write lock at once.
        self.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def close(self) -> None:
        self.db.close()
