"""The one way docbus opens an SQLite file: WAL, fsync on every commit, autocommit mode,
and sqlite3's errors classified where they are raised (DESIGN §7)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bus.wire.errors import BusError, Misconfigured, Unavailable


def sqlite_error(exc: sqlite3.Error) -> BusError | None:
    """sqlite3's error in the bus's model: a locked, busy, full or failing database is
    :class:`Unavailable` (another writer or the disk: it passes); a write refused by a
    read-only connection is :class:`Misconfigured`; a file that is no database is
    permanent; None for a statement's own fault (a bug: raised as it is)."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError):
        if "readonly" in text:
            return Misconfigured(f"the database refused: {text}")
        if any(word in text for word in _PASSING):
            return Unavailable("database", text)
        return None
    if type(exc) is sqlite3.DatabaseError:  # "file is not a database", a corrupt page
        return BusError(f"database: {exc}")
    return None


#: What sqlite3 says of a database that cannot serve now (SQLITE_BUSY, LOCKED, FULL,
#: IOERR, CANTOPEN, NOMEM), as opposed to a statement it cannot run.
_PASSING = ("locked", "busy", "full", "disk", "unable to open", "out of memory")


class _Classified(sqlite3.Connection):
    """A connection whose statements raise the bus's errors (the one place sqlite3's are
    read), so a locked or full database is retried, never taken for a bad record."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.Error as exc:
            raise _classified(exc) from exc

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.Error as exc:
            raise _classified(exc) from exc

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        try:
            return super().executescript(script)
        except sqlite3.Error as exc:
            raise _classified(exc) from exc


def _classified(exc: sqlite3.Error) -> BaseException:
    return sqlite_error(exc) or exc


def open_database(path: Path, schema: str, page_size: int | None = None) -> sqlite3.Connection:
    """Open (creating it and its folder if need be) a database shared between threads.

    Callers serialise access themselves and open transactions explicitly
    (``BEGIN IMMEDIATE``), so that one consumer batch is one fsync'd commit.
    ``page_size`` only takes effect on a new file (large pages speed up blob inserts).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, factory=_Classified)
    db.row_factory = sqlite3.Row
    if page_size is not None:
        db.execute(f"PRAGMA page_size = {int(page_size)}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA busy_timeout = 10000")
    db.executescript(schema)
    return db


def open_read_only(path: Path) -> sqlite3.Connection:
    """Open an existing database so that nothing can be written through the connection
    (SQLite refuses every write: read-only by construction, not by care)."""
    if not path.is_file():
        raise FileNotFoundError(f"no database at {path}")
    db = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, check_same_thread=False, factory=_Classified
    )
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout = 10000")
    return db
