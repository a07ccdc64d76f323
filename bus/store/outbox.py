"""The publisher's durable outbox (DESIGN §7): every record sent and not yet answered.

A record is written (and fsync'd) here before it is sent, so a crash or a broker that
forgets its log loses nothing: unanswered records are sent again until an ARCHIVED or
REJECTED status arrives.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from bus.store.sqlite import open_database
from bus.wire.errors import BusError, DocbusError, Reason
from bus.wire.model import LogProof, Status, StatusCode, event_digest

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    document_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    record BLOB NOT NULL,
    created_at TEXT NOT NULL,
    sent_at TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    reason TEXT,
    message TEXT,
    alarmed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (document_id, revision)
);
CREATE TABLE IF NOT EXISTS statuses (
    document_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    code TEXT NOT NULL,
    by TEXT NOT NULL,
    at TEXT NOT NULL,
    reason TEXT,
    message TEXT,
    rerouted TEXT NOT NULL,
    UNIQUE (document_id, revision, code, by)
);
"""
#: Columns added since the first outbox file: (table, column, type), applied in order.
MIGRATIONS = (("statuses", "log", "BLOB"),)


class State(StrEnum):
    PENDING = "PENDING"
    ARCHIVED = "ARCHIVED"
    REJECTED = "REJECTED"


FINAL = {StatusCode.ARCHIVED: State.ARCHIVED, StatusCode.REJECTED: State.REJECTED}
#: What the bus's services say (the verifier pinned who); the rest is agencies' feedback.
SERVICE_CODES = {StatusCode.DELIVERED, StatusCode.ARCHIVED, StatusCode.REJECTED}
#: The answers to a withdrawal request (edXML 15, 16): kept only after one was made.
ANSWERS = {StatusCode.CHANGE_ACCEPTED, StatusCode.CHANGE_REFUSED}


@dataclass(frozen=True)
class OutboxEntry:
    document_id: str
    revision: int
    sender: str
    recipients: tuple[str, ...]
    record: bytes
    created_at: datetime
    sent_at: datetime | None
    attempts: int
    state: State
    reason: str | None
    message: str | None


def _ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class Outbox:
    """An SQLite outbox file (WAL, fsync on commit). Thread-safe: calls are serialised."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_database(path, SCHEMA)
        for table, column, kind in MIGRATIONS:
            known = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in known:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (uuid.uuid4().hex,))

    @property
    def id(self) -> str:
        """A stable id of this outbox (names its status consumer group)."""
        with self._lock:
            return str(self._db.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(
        self,
        document_id: str,
        revision: int,
        sender: str,
        recipients: tuple[str, ...],
        record: bytes,
    ) -> None:
        """Keep a record before it is sent; adding the same revision again is a no-op."""
        self.add_many([(document_id, revision, sender, recipients, record)])

    def add_many(self, entries: list[tuple[str, int, str, tuple[str, ...], bytes]]) -> None:
        """Keep records before they are sent, in one transaction (one fsync for all)."""
        now = datetime.now(UTC).isoformat()
        rows = [
            (document_id, revision, sender, json.dumps(list(to)), record, now, State.PENDING.value)
            for document_id, revision, sender, to, record in entries
        ]
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO entries (document_id, revision, sender, recipients, record,"
                " created_at, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def mark_sent(self, document_id: str, revision: int) -> None:
        """Record that the broker acknowledged one more send of this entry."""
        self.mark_sent_many([(document_id, revision)])

    def mark_sent_many(self, sent: list[tuple[str, int]]) -> None:
        """Record one more acknowledged send of each entry, in one transaction."""
        now = datetime.now(UTC).isoformat()
        with self._lock, self._transaction():
            self._db.executemany(
                "UPDATE entries SET sent_at = ?, attempts = attempts + 1"
                " WHERE document_id = ? AND revision = ?",
                [(now, document_id, revision) for document_id, revision in sent],
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction (lock held): committed if the block ends, rolled back if it raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # a failed COMMIT (a full disk) leaves one open
                self._db.execute("ROLLBACK")
            raise

    def apply(self, status: Status, by_service: bool) -> OutboxEntry | None:
        """Record a verified status; returns the entry if it answers a record of this outbox.

        A status applies only to the exact bytes it names (``event_digest``), so a status
        about another record that reuses a document id changes nothing here. Feedback
        (RECEIVED … COMPLETED, and a REJECTED an agency signed) counts only from a
        recipient or the successor the gateway delivered to, and is never final: only
        the bus's services (``by_service``: a SERVICE signature the verifier pinned) end
        a document's fate.
        """
        done = self.apply_many([(status, by_service)])[0]
        if isinstance(done, DocbusError):
            raise done
        return done

    def apply_many(
        self, statuses: list[tuple[Status, bool]]
    ) -> list[OutboxEntry | DocbusError | None]:
        """:meth:`apply` for each, in order, in one transaction (one fsync for all). A
        status that cannot be kept (its content, not the database) is undone alone and
        answered with the error: it never takes the others back with it."""
        with self._lock, self._transaction():
            applied = [self._one(status, by_service) for status, by_service in statuses]
        return [
            self.get(status.document_id, status.revision) if done is True else done or None
            for (status, _), done in zip(statuses, applied, strict=True)
        ]

    def _one(self, status: Status, by_service: bool) -> bool | DocbusError:
        self._db.execute("SAVEPOINT status")
        try:
            done = self._apply(status, by_service)
        except BusError:
            raise  # the database's fault (locked, full): the whole batch is retried
        except Exception as exc:
            self._db.execute("ROLLBACK TO status")
            self._db.execute("RELEASE status")
            return DocbusError(Reason.MALFORMED, f"status not kept: {exc}")
        self._db.execute("RELEASE status")
        return done

    def _apply(self, status: Status, by_service: bool) -> bool:
        """One status applied (lock held, in a transaction); whether it answers a record."""
        row = self._db.execute(
            "SELECT state, record, recipients FROM entries WHERE document_id = ? AND revision = ?",
            (status.document_id, status.revision),
        ).fetchone()
        if row is None or status.event_digest != event_digest(bytes(row["record"])):
            return False
        service = by_service and status.code in SERVICE_CODES
        if not service and status.by not in self._addressed(
            status.document_id, status.revision, json.loads(row["recipients"])
        ):
            return False
        if status.code in ANSWERS and not self._asked(status.document_id, status.revision):
            return False  # an answer to a withdrawal this outbox never asked for
        if status.code is StatusCode.REJECTED and status.by in self._delivered_by(
            status.document_id, status.revision
        ):
            # The gateway delivered these bytes already: a later REJECTED from it is about
            # a replay of them (too old now), not about what was delivered.
            return False
        self._record(status)
        final = FINAL.get(status.code) if service else None
        if final is not None and row["state"] == State.PENDING.value:
            self._db.execute(
                "UPDATE entries SET state = ?, reason = ?, message = ?"
                " WHERE document_id = ? AND revision = ?",
                (final.value, status.reason, status.message, status.document_id, status.revision),
            )
        return True

    def _addressed(self, document_id: str, revision: int, recipients: list[str]) -> set[str]:
        """The recipients and the successors the gateway rerouted them to (lock held)."""
        rows = self._db.execute(
            "SELECT rerouted FROM statuses WHERE document_id = ? AND revision = ? AND code = ?",
            (document_id, revision, StatusCode.DELIVERED.value),
        ).fetchall()
        return {*recipients, *(a for r in rows for a in json.loads(r["rerouted"]).values())}

    def _asked(self, document_id: str, revision: int) -> bool:
        """Whether this outbox asked its recipients to withdraw that record (lock held)."""
        row = self._db.execute(
            "SELECT 1 FROM statuses WHERE document_id = ? AND revision = ? AND code = ?",
            (document_id, revision, StatusCode.WITHDRAW_REQUESTED.value),
        ).fetchone()
        return row is not None

    def _delivered_by(self, document_id: str, revision: int) -> set[str]:
        rows = self._db.execute(
            "SELECT by FROM statuses WHERE document_id = ? AND revision = ? AND code = ?",
            (document_id, revision, StatusCode.DELIVERED.value),
        ).fetchall()
        return {r["by"] for r in rows}

    def own(self, status: Status) -> None:
        """Record a status this outbox's own agency issued about a record it sent (a
        withdrawal request): shown with the others, never a fate."""
        with self._lock:
            self._record(status)

    def _record(self, status: Status) -> None:
        """Keep a status (lock held); one already kept is not kept twice."""
        self._db.execute(
            "INSERT OR IGNORE INTO statuses (document_id, revision, code, by, at, reason,"
            " message, rerouted, log) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                status.document_id,
                status.revision,
                status.code.value,
                status.by,
                status.at.isoformat(),
                status.reason,
                status.message,
                json.dumps(status.rerouted),
                None if status.log is None else _log_json(status.log),
            ),
        )

    def knows(self, document_id: str, revision: int) -> bool:
        """Whether this outbox sent that document revision (cheap: no record read)."""
        with self._lock:
            return (
                self._db.execute(
                    "SELECT 1 FROM entries WHERE document_id = ? AND revision = ?",
                    (document_id, revision),
                ).fetchone()
                is not None
            )

    def get(self, document_id: str, revision: int = 0) -> OutboxEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM entries WHERE document_id = ? AND revision = ?",
                (document_id, revision),
            ).fetchone()
        return None if row is None else _entry(row)

    def statuses(self, document_id: str, revision: int = 0) -> list[Status]:
        """Every status recorded for a document revision, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM statuses WHERE document_id = ? AND revision = ? ORDER BY at",
                (document_id, revision),
            ).fetchall()
        return [
            Status(
                document_id=r["document_id"],
                code=StatusCode(r["code"]),
                by=r["by"],
                at=datetime.fromisoformat(r["at"]),
                revision=r["revision"],
                reason=r["reason"],
                message=r["message"],
                rerouted=json.loads(r["rerouted"]),
                log=None if r["log"] is None else _log(r["log"]),
            )
            for r in rows
        ]

    def pending(self) -> list[OutboxEntry]:
        """Entries without a final status, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM entries WHERE state = ? ORDER BY created_at", (State.PENDING.value,)
            ).fetchall()
        return [_entry(r) for r in rows]

    def pending_summary(self) -> tuple[int, datetime | None]:
        """How many entries wait for a final status, and since when the oldest does."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM entries WHERE state = ?",
                (State.PENDING.value,),
            ).fetchone()
        return int(row[0]), _ts(row[1])

    def entries(self) -> list[OutboxEntry]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM entries ORDER BY created_at").fetchall()
        return [_entry(r) for r in rows]

    def due(self, resend_after: timedelta) -> list[OutboxEntry]:
        """Pending entries never sent, or sent longer ago than ``resend_after``."""
        cutoff = datetime.now(UTC) - resend_after
        return [e for e in self.pending() if e.sent_at is None or e.sent_at < cutoff]

    def newly_overdue(self, deadline: timedelta) -> list[OutboxEntry]:
        """Pending entries older than ``deadline`` not alarmed yet; marks them alarmed."""
        cutoff = (datetime.now(UTC) - deadline).isoformat()
        with self._lock:
            rows = self._db.execute(
                "UPDATE entries SET alarmed = 1 WHERE state = ? AND alarmed = 0 AND created_at < ?"
                " RETURNING *",
                (State.PENDING.value, cutoff),
            ).fetchall()
        return [_entry(r) for r in rows]


def _entry(row: sqlite3.Row) -> OutboxEntry:
    return OutboxEntry(
        document_id=row["document_id"],
        revision=row["revision"],
        sender=row["sender"],
        recipients=tuple(json.loads(row["recipients"])),
        record=bytes(row["record"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        sent_at=_ts(row["sent_at"]),
        attempts=row["attempts"],
        state=State(row["state"]),
        reason=row["reason"],
        message=row["message"],
    )


def _log_json(log: LogProof) -> str:
    """An ARCHIVED receipt's log position, kept so the sender can show its proof."""
    return json.dumps(
        {
            "index": log.index,
            "tree_size": log.tree_size,
            "root_hash": log.root_hash.hex(),
            "inclusion_proof": [h.hex() for h in log.inclusion_proof],
            "checkpoint": log.checkpoint.decode(),
        }
    )


def _log(text: str) -> LogProof:
    d = json.loads(text)
    return LogProof(
        index=d["index"],
        tree_size=d["tree_size"],
        root_hash=bytes.fromhex(d["root_hash"]),
        inclusion_proof=tuple(bytes.fromhex(h) for h in d["inclusion_proof"]),
        checkpoint=d["checkpoint"].encode(),
    )
