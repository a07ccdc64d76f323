"""The archive's transparency log (DESIGN §6): Merkle nodes, signed checkpoints, log keys.

``log_nodes`` holds the hash of every perfect subtree, so appending, roots and proofs cost
O(log n) lookups however large the log grows; the nodes of committed subtrees are kept in
memory, since they never change once written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bus.store.database import Database
from bus.store.tables import Tables
from bus.tlog.checkpoint import Checkpoint, note_text
from bus.tlog.merkle import consistency_proof, inclusion_proof, root_hash

#: Log nodes kept in memory: a perfect subtree's hash never changes once written, and every
#: inclusion proof of a batch reads the same upper nodes.
_NODE_CACHE = 1 << 16

#: Signs a checkpoint of the log at (size, root): the checkpoint and its note.
Signer = Callable[[int, bytes], tuple[Checkpoint, bytes]]


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint as stored: the note exactly as signed and published, and when."""

    checkpoint: Checkpoint
    signed: bytes
    at: datetime


class LogTables(Tables):
    """The log's nodes, checkpoints and keys. Each public method takes the lock; the
    private ones run inside a call that holds it."""

    def __init__(self, db: Database, read_only: bool = False) -> None:
        super().__init__(db, read_only)
        self._nodes: dict[tuple[int, int], bytes] = {}
        #: Nodes written by the transaction in progress: cached only once it commits.
        self._pending: dict[tuple[int, int], bytes] = {}

    def _node(self, level: int, index: int) -> bytes:
        key = (level, index)
        found = self._pending.get(key) or self._nodes.get(key)
        if found is not None:
            return found
        row = self._exec("SELECT hash FROM log_nodes WHERE level = ? AND idx = ?", key).fetchone()
        if row is None:
            raise KeyError(f"log node ({level}, {index}) is missing")
        found = bytes(row[0])
        if not self._pending:  # read outside a write: the stored node is committed
            self._cache({key: found})
        return found

    def _cache(self, nodes: dict[tuple[int, int], bytes]) -> None:
        if len(self._nodes) + len(nodes) > _NODE_CACHE:
            self._nodes.clear()
        self._nodes.update(nodes)

    def _size(self) -> int:
        row = self._exec("SELECT COALESCE(MAX(idx) + 1, 0) FROM log_nodes WHERE level = 0")
        return int(row.fetchone()[0])

    def _sign_checkpoint(
        self, size: int, sign: Signer
    ) -> tuple[StoredCheckpoint | None, StoredCheckpoint | None]:
        """A new signed checkpoint at ``size`` if the log outgrew the latest (in the
        transaction, lock held); and the latest before it."""
        row = self._exec("SELECT signed, at FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        previous = None if row is None else _stored(row)
        if size == 0 or (previous is not None and previous.checkpoint.size >= size):
            return None, previous
        checkpoint, signed = sign(size, root_hash(self._node, size))
        at = datetime.now(UTC)
        self._exec(
            "INSERT INTO checkpoints (size, root, at, signed) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (checkpoint.size, checkpoint.root, at.isoformat(), signed),
        )
        return StoredCheckpoint(checkpoint, signed, at), previous

    def leaf(self, index: int) -> bytes | None:
        """The stored leaf hash at ``index``, or None."""
        with self._using():
            try:
                return self._node(0, index)
            except KeyError:
                return None

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """A consistency proof between two sizes, from the stored log nodes."""
        with self._using():
            return consistency_proof(self._node, size1, size2)

    def log_size(self) -> int:
        with self._using():
            return self._size()

    def root(self, size: int) -> bytes:
        with self._using():
            return root_hash(self._node, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._using():
            return inclusion_proof(self._node, index, size)

    def leaf_hashes(self) -> list[bytes]:
        """The log's stored leaf hashes, in log order."""
        with self._using():
            rows = self._exec("SELECT hash FROM log_nodes WHERE level = 0 ORDER BY idx")
            return [bytes(r[0]) for r in rows]

    def add_checkpoint(self, checkpoint: Checkpoint, signed: bytes, at: datetime) -> None:
        with self._using():
            self._exec(
                "INSERT INTO checkpoints (size, root, at, signed) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (checkpoint.size, checkpoint.root, at.isoformat(), signed),
            )

    def checkpoints(self) -> Iterator[StoredCheckpoint]:
        """Every stored signed checkpoint, smallest first (as stored: audits re-check them)."""
        with self._using():
            sizes = [r[0] for r in self._exec("SELECT size FROM checkpoints ORDER BY size")]
        for size in sizes:  # one row at a time: memory stays bounded
            with self._using():
                row = self._exec(
                    "SELECT signed, at FROM checkpoints WHERE size = ?", (size,)
                ).fetchone()
            if row is not None:
                yield _stored(row)

    def recent_checkpoints(self, limit: int) -> list[StoredCheckpoint]:
        """The ``limit`` largest stored checkpoints, largest first."""
        with self._using():
            rows = self._exec(
                "SELECT signed, at FROM checkpoints ORDER BY size DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_stored(r) for r in rows]

    def covering_checkpoint(
        self, index: int
    ) -> tuple[StoredCheckpoint, StoredCheckpoint | None] | None:
        """The first checkpoint that covers log entry ``index`` (the one signed in the
        transaction that appended it), and the checkpoint just before that one."""
        with self._using():
            row = self._exec(
                "SELECT signed, at FROM checkpoints WHERE size > ? ORDER BY size LIMIT 1",
                (index,),
            ).fetchone()
            if row is None:
                return None
            first = _stored(row)
            before = self._exec(
                "SELECT signed, at FROM checkpoints WHERE size < ? ORDER BY size DESC LIMIT 1",
                (first.checkpoint.size,),
            ).fetchone()
        return first, None if before is None else _stored(before)

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        with self._using():
            row = self._exec(
                "SELECT signed, at FROM checkpoints ORDER BY size DESC LIMIT 1"
            ).fetchone()
        return None if row is None else _stored(row)

    def set_log_key(self, origin: str, chain: Sequence[bytes]) -> None:
        """Keep the certificate chain (DER, leaf first) whose key signs ``origin``'s notes."""
        with self._using():
            self._exec(
                "INSERT INTO log_keys (origin, chain) VALUES (?, ?)"
                " ON CONFLICT (origin) DO UPDATE SET chain = excluded.chain",
                (origin, _pack(chain)),
            )

    def log_key(self, origin: str) -> list[bytes]:
        """The certificate chain that signs ``origin``'s checkpoints (empty if unknown)."""
        with self._using():
            row = self._exec("SELECT chain FROM log_keys WHERE origin = ?", (origin,)).fetchone()
        return [] if row is None else _unpack(bytes(row[0]))


def _stored(row: Any) -> StoredCheckpoint:
    signed = bytes(row["signed"])
    return StoredCheckpoint(
        Checkpoint.parse(note_text(signed)), signed, datetime.fromisoformat(row["at"])
    )


def _pack(chain: Sequence[bytes]) -> bytes:
    return b"".join(len(c).to_bytes(4, "big") + c for c in chain)


def _unpack(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i + 4 <= len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return out
