"""The inbox's index: what was received, in order, for listing with a cursor."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from bus.store.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS received (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sender TEXT NOT NULL,
    document_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    subject TEXT NOT NULL,
    received_at TEXT NOT NULL,
    verification TEXT NOT NULL,
    due_date TEXT,
    answered TEXT,
    UNIQUE (sender, document_id, revision)
);
"""
#: Columns added since the first index file: (column, type), added where missing.
MIGRATIONS = (("due_date", "TEXT"), ("answered", "TEXT"))
#: The feedback that closes a document for the agency: it is then never overdue.
CLOSING = ("COMPLETED", "REJECTED")


@dataclass(frozen=True)
class Received:
    seq: int
    sender: str
    document_id: str
    revision: int
    subject: str
    received_at: datetime
    verification: dict[str, Any]
    due_date: date | None = None
    #: The closing feedback this agency sent (COMPLETED or REJECTED), if any.
    answered: str | None = None


class ReceivedIndex:
    """An SQLite file beside the inbox folder. Thread-safe: calls are serialised."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_database(path, SCHEMA)
        have = {r["name"] for r in self._db.execute("PRAGMA table_info(received)")}
        for column, kind in MIGRATIONS:
            if column not in have:
                self._db.execute(f"ALTER TABLE received ADD COLUMN {column} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(
        self,
        sender: str,
        document_id: str,
        revision: int,
        subject: str,
        received_at: datetime,
        verification: dict[str, Any],
        due_date: date | None = None,
    ) -> None:
        """Note a document kept in the inbox; noting it again is a no-op."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO received (sender, document_id, revision, subject,"
                " received_at, verification, due_date) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    sender,
                    document_id,
                    revision,
                    subject,
                    received_at.isoformat(),
                    json.dumps(verification, ensure_ascii=False),
                    due_date.isoformat() if due_date else None,
                ),
            )

    def answer(self, sender: str, document_id: str, revision: int, code: str) -> None:
        """Note the feedback the agency sent; a closing one takes it off the overdue list."""
        if code not in CLOSING:
            return
        with self._lock:
            self._db.execute(
                "UPDATE received SET answered = ? WHERE sender = ? AND document_id = ?"
                " AND revision = ? AND answered IS NULL",
                (code, sender, document_id, revision),
            )

    def overdue(self, on: date, limit: int) -> list[Received]:
        """Documents due before ``on`` that the agency has not completed or refused, the
        most overdue first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM received WHERE due_date < ? AND answered IS NULL"
                " ORDER BY due_date, seq LIMIT ?",
                (on.isoformat(), limit),
            ).fetchall()
        return [_received(r) for r in rows]

    def after(self, cursor: int, limit: int) -> list[Received]:
        """Up to ``limit`` documents received after ``cursor``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM received WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, limit)
            ).fetchall()
        return [_received(r) for r in rows]

    def get(self, sender: str, document_id: str, revision: int) -> Received | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM received WHERE sender = ? AND document_id = ? AND revision = ?",
                (sender, document_id, revision),
            ).fetchone()
        return None if row is None else _received(row)


def _received(row: sqlite3.Row) -> Received:
    return Received(
        seq=row["seq"],
        sender=row["sender"],
        document_id=row["document_id"],
        revision=row["revision"],
        subject=row["subject"],
        received_at=datetime.fromisoformat(row["received_at"]),
        verification=json.loads(row["verification"]),
        due_date=date.fromisoformat(row["due_date"]) if row["due_date"] else None,
        answered=row["answered"],
    )
