"""The one way docbus opens an SQLite file: WAL, fsync on every commit, autocommit mode."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_database(path: Path, schema: str, page_size: int | None = None) -> sqlite3.Connection:
    """Open (creating it and its folder if need be) a database shared between threads.

    Callers serialise access themselves and open transactions explicitly
    (``BEGIN IMMEDIATE``), so that one consumer batch is one fsync'd commit.
    ``page_size`` only takes effect on a new file (large pages speed up blob inserts).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
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
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout = 10000")
    return db
