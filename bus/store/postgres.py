"""PostgreSQL for the archive (DESIGN §6): a pool of checked connections, psycopg's errors
classified once, and the read-only role the archive API connects as."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import RowMaker
from psycopg_pool import ConnectionPool

from bus.store.database import POSTGRES, Database, Rows
from bus.wire.errors import BusError, Misconfigured, Unavailable


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


def postgres_error(exc: psycopg.Error) -> BusError | None:
    """psycopg's error in the bus's model: a server or connection that is down, restarting,
    terminated or out of resources (OperationalError, a closed connection, a pool that
    lends none) is :class:`Unavailable`; a privilege refused is :class:`Misconfigured`;
    None for a statement's own fault (a bug: raised as it is)."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return Unavailable("database", _first_line(exc))
    if isinstance(
        exc, psycopg.errors.InsufficientPrivilege | psycopg.errors.ReadOnlySqlTransaction
    ):
        return Misconfigured(f"the database refused: {_first_line(exc)}")
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@contextmanager
def _classified() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        error = postgres_error(exc)
        if error is None:
            raise
        raise error from exc


class PostgresDatabase(Database):
    """A pool of connections to one PostgreSQL database, each checked before it is lent:
    a server restarted or a connection terminated is replaced, not kept.

    :param url: a libpq connection URL (``postgresql://user@host:5432/db``).
    :param read_only: every transaction is read-only (the server refuses writes).
    :param size: connections kept (one writer, a reader or two).
    """

    dialect = POSTGRES

    def __init__(self, url: str, read_only: bool = False, size: int = 2) -> None:
        super().__init__(redacted(url))
        try:
            conninfo_to_dict(url)
        except psycopg.Error:
            # libpq's message repeats the string it could not parse, password and all.
            raise Misconfigured("the database URL is not a valid connection string") from None
        options = "-c default_transaction_read_only=on" if read_only else ""
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=size,
            kwargs={"autocommit": True, "row_factory": _rows, "options": options},
            check=ConnectionPool.check_connection,
            timeout=10,
            reconnect_timeout=60,  # then given up, and tried again at the next call
            open=False,
        )
        self.pool.open(wait=False)  # a database not up yet is waited for, not fatal
        self._held: psycopg.Connection[Any] | None = None

    def execute(self, sql: str, params: Sequence[object] = ()) -> Rows:
        with _classified(), self._connection() as db:
            cursor = db.execute(self.dialect.sql(sql), params or None)
            return Rows(cursor.fetchall() if cursor.description else [])

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with _classified(), self._connection() as db, db.cursor() as cursor:
            cursor.executemany(self.dialect.sql(sql), rows)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._held is not None:  # inside a transaction: its connection
            yield self._held
            return
        with self.pool.connection() as db:
            yield db

    @contextmanager
    def transaction(self, *first: str) -> Iterator[None]:
        with _classified(), self.pool.connection() as db, db.transaction():
            self._held = db
            try:
                for statement in first:
                    db.execute(statement)
                yield
            finally:
                self._held = None

    def close(self) -> None:
        self.pool.close()


def grant_reader(url: str, role: str, password: str | None = None) -> None:
    """Make ``role`` a login role that may read the archive at ``url`` and nothing else:
    SELECT on its tables, now and after later migrations, and no right to write. The
    archive API connects as it, so it is read-only in the database's own terms."""
    if not _ROLE.fullmatch(role):
        raise Misconfigured(f"{role!r} is not a role name (letters, digits, _; up to 63)")
    name = sql.Identifier(role)
    with _classified(), psycopg.connect(url, autocommit=True) as db:
        exists = db.execute(
            "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = %s",
            (role,),
        ).fetchone()
        if exists is not None and exists[0]:
            raise Misconfigured(f"{role} is a privileged role: a reader must be able to do nothing")
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
