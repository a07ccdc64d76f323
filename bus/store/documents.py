"""The archive's documents (DESIGN §6): each verified document once, conflicts kept and
flagged, and the queries the archive API and the audits ask of them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from bus.store.schema import fold
from bus.store.tables import Tables
from bus.wire.codec import default_codec
from bus.wire.model import Document


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


_INSERTED = (
    "document_id, revision, digest, payload_digest, sender, recipients, subject, "
    "confidentiality, topic, received_at, archived_at, conflict, event, receipt, log_index, "
    "subject_fold"
)
_COLUMNS = (
    "seq, document_id, revision, digest, payload_digest, sender, recipients, subject, "
    "confidentiality, topic, received_at, archived_at, conflict, event, receipt, log_index"
)


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


class DocumentTables(Tables):
    """The ``entries`` table: what was archived, and the queries over it."""

    def _identity(self, e: NewEntry) -> list[Any]:
        """Every row of ``e``'s identity, oldest first: the first is the original."""
        return self._exec(
            "SELECT digest, conflict, log_index, payload_digest FROM entries"
            " WHERE sender = ? AND document_id = ? AND revision = ? ORDER BY seq",
            (e.sender, e.document_id, e.revision),
        ).fetchall()

    def _insert(self, e: NewEntry, index: int, archived_at: str, conflict: bool) -> None:
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
                archived_at,
                int(conflict),
                e.event,
                e.receipt,
                index,
                fold(e.subject),
            ),
        )

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
        with self._using():
            rows = self._exec(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
            return [_entry(r) for r in rows]

    def stream(self, chunk: int = 1000) -> Iterator[Entry]:
        """Every entry in log order, read ``chunk`` rows at a time (bounded memory)."""
        after = -1
        while True:
            with self._using():
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
            with self._using():
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
        with self._using():
            return self._original_payload(sender, document_id, revision)

    def _original_payload(self, sender: str, document_id: str, revision: int) -> str | None:
        row = self._exec(
            "SELECT payload_digest FROM entries WHERE sender = ? AND document_id = ?"
            " AND revision = ? ORDER BY seq LIMIT 1",
            (sender, document_id, revision),
        ).fetchone()
        return None if row is None else str(row[0])

    def find(self, document_id: str) -> list[Entry]:
        """Every stored entry of a document, all revisions, conflicts included."""
        with self._using():
            rows = self._exec(
                f"SELECT {_COLUMNS} FROM entries WHERE document_id = ? ORDER BY seq", (document_id,)
            )
            return [_entry(r) for r in rows]

    def count(self) -> int:
        with self._using():
            row = self._exec("SELECT count(*) FROM entries").fetchone()
            return int(row[0])

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
            with self._using():
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
        with self._using():
            rows = self._exec(
                f"SELECT {_COLUMNS} FROM entries WHERE conflict = 1 ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [_entry(r) for r in rows]

    def by_digest(self, digest: str) -> Entry | None:
        with self._using():
            row = self._exec(
                f"SELECT {_COLUMNS} FROM entries WHERE digest = ?", (digest,)
            ).fetchone()
        return None if row is None else _entry(row)
