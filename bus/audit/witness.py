"""The witness (DESIGN §6): follows the checkpoint topic, keeps the last checkpoint it
accepted per log, checks a consistency proof to each new one, and cosigns it
(C2SP tlog-cosignature/v1). A rollback or a split view (two checkpoints that are not
consistent) is refused, kept with both checkpoints, and reported.

With witnesses, no single key can fork the log unseen: the archiver's key signs
checkpoints, but a reader that demands k cosignatures trusts only a history that k
independent witnesses saw grow consistently.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiokafka.structs import ConsumerRecord

from bus.audit.replay import read_topics
from bus.kafka.clients import KafkaSettings
from bus.kafka.runtime import Output, Record, Reject, Result
from bus.kafka.topics import Topics
from bus.store.sqlite import open_database
from bus.tlog.checkpoint import HASH_SIZE, Checkpoint, open_checkpoint
from bus.tlog.merkle import verify_consistency
from bus.tlog.note import NoteError, NoteVerifier, add_lines, open_note, split_note
from bus.trust.signing import SigningKey, note_signer
from bus.trust.verifier import Verifier
from bus.wire.errors import DocbusError, Reason
from bus.wire.headers import (
    CONSISTENCY,
    CONSISTENCY_FROM,
    COSIGNED_BY,
    LOG_CERT,
    WITNESS_CERT,
    header,
    headers_all,
)

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS accepted (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    origin TEXT NOT NULL,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    PRIMARY KEY (origin, size)
);
CREATE TABLE IF NOT EXISTS held (
    seq INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    since INTEGER NOT NULL,
    note BLOB NOT NULL,
    record TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS held_since ON held (origin, since);
CREATE INDEX IF NOT EXISTS held_note ON held (note);
CREATE TABLE IF NOT EXISTS alarms (
    seq INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    kind TEXT NOT NULL,
    known BLOB NOT NULL,
    seen BLOB NOT NULL,
    at TEXT NOT NULL
);
"""
STATE_FILE = "witness.sqlite"


@dataclass(frozen=True)
class Alarm:
    """A log that showed this witness two histories: both checkpoints, as signed."""

    origin: str
    kind: str  # "rollback" or "split view"
    known: bytes
    seen: bytes


class WitnessState:
    """The last checkpoint accepted per log, and every alarm raised (one SQLite file)."""

    def __init__(self, folder: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_database(folder / STATE_FILE, SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def last(self, origin: str) -> tuple[Checkpoint, bytes] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT size, root, note FROM accepted WHERE origin = ?", (origin,)
            ).fetchone()
        if row is None:
            return None
        return Checkpoint(origin, int(row["size"]), bytes(row["root"])), bytes(row["note"])

    def accept(self, checkpoint: Checkpoint, note: bytes) -> None:
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO accepted VALUES (?, ?, ?, ?)",
                (checkpoint.origin, checkpoint.size, checkpoint.root, note),
            )
            self._db.execute(
                "INSERT OR IGNORE INTO history VALUES (?, ?, ?)",
                (checkpoint.origin, checkpoint.size, checkpoint.root),
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write, all or nothing: a failure never leaves the file inside a transaction
        (every later write would fail)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def first(self, origin: str) -> int | None:
        """The smallest size this witness accepted for ``origin``: where its watch began."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(size) FROM history WHERE origin = ?", (origin,)
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def root_at(self, origin: str, size: int) -> bytes | None:
        """The root this witness accepted for ``origin`` at ``size``, if it saw that size."""
        with self._lock:
            row = self._db.execute(
                "SELECT root FROM history WHERE origin = ? AND size = ?", (origin, size)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def hold(self, origin: str, since: int, record: Record) -> bool:
        """Keep a checkpoint that came before the one its proof starts from: on disk, so a
        restart (its offset is committed) does not lose it. False (not held) past the
        bounds: a few copies of one note (the size is an unsigned header, and the genuine
        copy comes first), a record's size, all held."""
        dumped = _dump(record)
        note = record.value or b""
        with self._lock, self._transaction():
            copies, total = self._db.execute(
                "SELECT (SELECT COUNT(*) FROM held WHERE note = ?),"
                " (SELECT COALESCE(SUM(bytes), 0) FROM held)",
                (note,),
            ).fetchone()
            if (
                len(dumped) > _EARLY_RECORD_BYTES
                or copies >= _COPIES
                or (total + len(dumped) > _EARLY_BYTES)
            ):
                return False
            self._db.execute(
                "INSERT INTO held (origin, since, note, record, bytes) VALUES (?, ?, ?, ?, ?)",
                (origin, since, note, dumped, len(dumped)),
            )
        return True

    def release(self, origin: str, size: int) -> list[Record]:
        """Once ``size`` is accepted: every checkpoint held for ``origin`` whose proof
        starts at or below it, oldest first, no longer held. Those from below it wait for a
        size that will never come (this witness is past it): checked now, they are found
        out (a rollback, or no proof from the last size)."""
        with self._lock, self._transaction():
            rows = self._db.execute(
                "SELECT seq, record FROM held WHERE origin = ? AND since <= ? ORDER BY seq",
                (origin, size),
            ).fetchall()
            self._db.executemany("DELETE FROM held WHERE seq = ?", [(r[0],) for r in rows])
        return [_load(r[1]) for r in rows]

    def alarm(self, alarm: Alarm) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO alarms (origin, kind, known, seen, at) VALUES (?, ?, ?, ?, ?)",
                (alarm.origin, alarm.kind, alarm.known, alarm.seen, datetime.now(UTC).isoformat()),
            )

    def alarms(self) -> list[Alarm]:
        with self._lock:
            rows = self._db.execute(
                "SELECT origin, kind, known, seen FROM alarms ORDER BY seq"
            ).fetchall()
        return [Alarm(r[0], r[1], bytes(r[2]), bytes(r[3])) for r in rows]


class Witness:
    """The witness's handler: one checkpoint record in, its cosignature (or a refusal) out.

    :param verifier: checks the log key (a pinned archiver's certificate).
    :param key: the witness's SERVICE key (Ed25519); its agency code names its cosignatures.
    """

    stage = "witness"

    def __init__(
        self, verifier: Verifier, key: SigningKey, state: WitnessState, topics: Topics
    ) -> None:
        self.verifier = verifier
        self.signer = note_signer(key)
        self.chain = key.chain_der
        self.state = state
        self.topics = topics
        self.cosigned = 0
        #: Checkpoints that arrived before the one their proof starts from (several
        #: archivers publish side by side; one that died publishes late) are held in the
        #: state (:meth:`WitnessState.hold`), each checked in full once that one is
        #: accepted. Only a checkpoint between the two sizes is held.
        self._started = False

    async def handle(self, records: Sequence[Record]) -> Sequence[Result]:
        # The first batch after a start begins at the committed offset: what the process
        # before accepted there may have died with its cosignatures unsent.
        first, self._started = not self._started, True
        return await asyncio.to_thread(self.process, records, first)

    def process(self, records: Sequence[Record], redelivered: bool = False) -> list[Result]:
        """Check each checkpoint record; with ``redelivered`` (records this witness may
        have accepted without its cosignature going out), cosign again those accepted."""
        results: list[Result] = []
        for record in records:
            if header(record.headers, COSIGNED_BY) is not None:
                continue  # another witness's cosignature (or ours): not a new checkpoint
            results.extend(self.check(record, redelivered))
        return results

    def check(self, record: Record, redelivered: bool = False) -> list[Result]:
        """Accept and cosign a checkpoint that extends the last one accepted, then the held
        ones it lets through (a loop: the chain may be long); a Reject for each refused,
        with both checkpoints in its message for a rollback or a split view."""
        out: list[Result] = []
        work = collections.deque([record])
        while work:
            current = work.popleft()
            try:
                accepted, results = self._check_one(current, redelivered)
            except DocbusError as exc:
                out.append(Reject(current, exc.reason, exc.message))
                continue
            out.extend(results)
            if accepted is not None:
                work.extend(self.state.release(accepted.origin, accepted.size))
        return out

    def _check_one(
        self, record: Record, redelivered: bool
    ) -> tuple[Checkpoint | None, list[Result]]:
        """One checkpoint: (the checkpoint if accepted now, what to publish)."""
        note = record.value or b""
        key = self.verifier.log_key(headers_all(record.headers, LOG_CERT))
        checkpoint, _ = open_checkpoint(note, key)
        origin = checkpoint.origin
        known = self.state.last(origin)
        seen = None if known is None else self.state.root_at(origin, checkpoint.size)
        if seen == checkpoint.root:  # accepted before: cosigned, perhaps unsent
            return None, [self._cosignature(checkpoint, note, record)] if redelivered else []
        # Its predecessor is still on its way: checked when it arrives. A first checkpoint
        # too, unless it is the log's first (its proof starts from nothing): a witness
        # follows the chain from the start, so it has seen every size up to its last.
        since = _since(record) or 0
        after = 0 if known is None else known[0].size
        early = after < since < checkpoint.size and seen is None
        if early and self.state.hold(origin, since, record):
            return None, []
        if known is not None:
            self._check_extends(known, checkpoint, note, record, seen)
        self.state.accept(checkpoint, note)
        self.cosigned += 1
        log.info("cosigned", origin=origin, size=checkpoint.size)
        return checkpoint, [self._cosignature(checkpoint, note, record)]

    def _cosignature(self, checkpoint: Checkpoint, note: bytes, record: Record) -> Output:
        cosigned = add_lines(
            note, [self.signer.cosign(checkpoint.text(), int(datetime.now(UTC).timestamp()))]
        )
        headers = [
            (COSIGNED_BY, self.signer.name.encode()),
            *((LOG_CERT, der) for der in headers_all(record.headers, LOG_CERT)),
            *((WITNESS_CERT, der) for der in self.chain),
        ]
        return Output(self.topics.checkpoints, checkpoint.origin.encode(), cosigned, headers)

    def _check_extends(
        self,
        known: tuple[Checkpoint, bytes],
        new: Checkpoint,
        note: bytes,
        record: Record,
        seen: bytes | None,
    ) -> None:
        last, last_note = known
        if seen is not None:  # that size had another root: two histories
            self._raise(Alarm(new.origin, "split view", last_note, note))
        if new.size < last.size:
            first = self.state.first(new.origin) or 0
            if 0 < new.size < first:  # a genuine log never signs size 0
                raise DocbusError(
                    Reason.POLICY,
                    f"checkpoint of size {new.size} predates this witness's watch (from size "
                    f"{first}): nothing to check it against, not cosigned",
                )
            self._raise(Alarm(new.origin, "rollback", last_note, note))
        if _since(record) != last.size or not verify_consistency(
            last.size, new.size, last.root, new.root, _proof(record)
        ):
            # The proof travels unsigned beside the note: a missing or bent one proves
            # nothing either way, so the checkpoint is refused (not cosigned), no alarm.
            raise DocbusError(
                Reason.POLICY,
                f"no consistency proof from size {last.size} to {new.size}: not cosigned",
            )

    def _raise(self, alarm: Alarm) -> None:
        self.state.alarm(alarm)
        log.error(
            f"ALARM: {alarm.kind}",
            origin=alarm.origin,
            known=alarm.known.decode("utf-8", "replace"),
            seen=alarm.seen.decode("utf-8", "replace"),
        )
        raise DocbusError(
            Reason.POLICY,
            f"{alarm.kind} of {alarm.origin}: accepted\n{alarm.known.decode('utf-8', 'replace')}"
            f"then saw\n{alarm.seen.decode('utf-8', 'replace')}",
        )


@dataclass(frozen=True)
class Published:
    """What the checkpoint topic holds: the logs' signed notes as published, and the
    verified cosignature lines of pinned witnesses by the checkpoint text they cosign."""

    notes: tuple[bytes, ...] = ()
    cosignatures: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    witnesses: tuple[NoteVerifier, ...] = ()


async def published(records: AsyncIterator[Record], verifier: Verifier) -> Published:
    """Read the checkpoint topic: every log note, and every cosignature that verifies (one
    per witness and checkpoint: a witness may cosign one again)."""
    notes: list[bytes] = []
    lines: dict[str, dict[tuple[str, bytes], str]] = {}
    keys: dict[str, NoteVerifier] = {}
    async for record in records:
        if header(record.headers, COSIGNED_BY) is None:
            notes.append(record.value or b"")
            continue
        try:
            key = verifier.witness_key(headers_all(record.headers, WITNESS_CERT))
            text, signatures = split_note(record.value or b"")
        except (DocbusError, NoteError) as exc:
            log.warning("cosignature ignored", error=str(exc))
            continue
        for line in signatures:
            if (line.name, line.hash) != (key.name, key.hash):
                continue
            blob = base64.b64encode(line.hash + line.blob).decode()
            signed = f"— {line.name} {blob}\n"
            try:  # only a cosignature that verifies is kept: a bent one must not spoil others
                open_note((text + "\n" + signed).encode(), [key])
            except NoteError:
                continue
            keys[key.name] = key
            lines.setdefault(text, {}).setdefault((line.name, line.hash), signed)
    cosignatures = {t: tuple(v.values()) for t, v in lines.items()}
    return Published(tuple(notes), cosignatures, tuple(keys.values()))


async def witness_once(settings: KafkaSettings, witness: Witness) -> None:
    """Check every record the checkpoint topic holds now (no group), publish the
    cosignatures, and return: for scripts and scheduled runs."""
    producer = settings.producer()
    await producer.start()
    try:
        async for record in read_topics(settings, [settings.topics.checkpoints], None, None):
            for result in witness.process([record]):
                if isinstance(result, Output):
                    await producer.send_and_wait(
                        result.topic, result.value, key=result.key, headers=result.headers
                    )
    finally:
        await producer.stop()


#: An early checkpoint is a note and a consistency proof (at most 64 hashes) with the log
#: key's certificates: anything larger is checked at once; all held, at most this much.
_EARLY_RECORD_BYTES = 64 * 1024
_EARLY_BYTES = 16 * 1024 * 1024
_COPIES = 4


def _dump(record: Record) -> str:
    """A held record as kept on disk: what a later check and a refusal read of it."""
    return json.dumps(
        {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
            "key": None if record.key is None else base64.b64encode(record.key).decode(),
            "value": base64.b64encode(record.value or b"").decode(),
            "headers": [[k, base64.b64encode(v or b"").decode()] for k, v in record.headers],
        }
    )


def _load(text: str) -> Record:
    d = json.loads(text)
    key = None if d["key"] is None else base64.b64decode(d["key"])
    value = base64.b64decode(d["value"])
    headers = tuple((k, base64.b64decode(v)) for k, v in d["headers"])
    return ConsumerRecord(
        d["topic"], d["partition"], d["offset"], d["timestamp"], 0, key, value, None,
        len(key or b""), len(value), headers,
    )  # fmt: skip


def _proof(record: Record) -> list[bytes]:
    """The published consistency proof, hash by hash."""
    blob = header(record.headers, CONSISTENCY) or b""
    return [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]


def _since(record: Record) -> int | None:
    """The size the published consistency proof starts from, if it says one (a size is at
    most 19 digits, as in a checkpoint)."""
    text = (header(record.headers, CONSISTENCY_FROM) or b"").decode("ascii", "replace")
    return int(text) if text.isdigit() and len(text) <= 19 else None
