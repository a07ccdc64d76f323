"""What the witness tests share: a pinned witness, and a log of genuine signed checkpoints
with the records that carry them onto the checkpoint topic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bus.audit.witness import Witness, WitnessState
from bus.kafka.runtime import Record
from bus.kafka.topics import Topics
from bus.tlog.checkpoint import Checkpoint
from bus.tlog.merkle import MemoryTree, consistency_proof
from bus.trust.signing import SigningKey, sign_checkpoint
from bus.trust.verifier import Verifier
from bus.wire.headers import log_headers
from bus.wire.model import Role
from tests.conftest import Pki


def pinned_witness(pki: Pki, state: WitnessState) -> Witness:
    """A pinned witness (docbus.witness) keeping its state in ``state``."""
    return Witness(Verifier(pki.trust), pki.key("docbus.witness", Role.SERVICE), state, Topics())


def checkpoint_record(note: bytes, headers: Sequence[tuple[str, bytes]], offset: int) -> Record:
    return Record(
        "docbus.checkpoints", 0, offset, 0, 0, None, note, None, 0, len(note), tuple(headers)
    )


def entry(i: int) -> bytes:
    """The ``i``th entry of a test log."""
    return b"entry %d" % i


def signed_notes(
    archiver: SigningKey, leaves: int, sizes: Sequence[int]
) -> tuple[MemoryTree, dict[int, bytes]]:
    """A log of ``leaves`` leaves, and the archiver's signed checkpoint at each size."""
    tree = MemoryTree([entry(i) for i in range(leaves)])
    notes = {
        n: sign_checkpoint(Checkpoint("docbus.archiver", n, tree.root(n)), archiver) for n in sizes
    }
    return tree, notes


@dataclass(frozen=True)
class Log:
    """The archiver's genuine checkpoints at some sizes of one log."""

    archiver: SigningKey
    tree: MemoryTree
    notes: dict[int, bytes]

    @classmethod
    def of(cls, pki: Pki, leaves: int, sizes: Sequence[int]) -> Log:
        archiver = pki.key("docbus.archiver", Role.SERVICE)
        return cls(archiver, *signed_notes(archiver, leaves, sizes))

    def record(self, size: int, since: int = 0, offset: int = 0) -> Record:
        """The checkpoint at ``size`` as an archiver publishes it: with the proof from
        ``since`` (0: the log's first, no proof)."""
        proof = consistency_proof(self.tree.node, since, size) if since else []
        return checkpoint_record(
            self.notes[size], log_headers(self.archiver.chain_der, since, proof), offset
        )

    def carry(self, note: bytes, since: int, offset: int = 0) -> Record:
        """Any ``note`` (a forged one, say) as a record whose proof starts from ``since``
        and holds no hash."""
        return checkpoint_record(note, log_headers(self.archiver.chain_der, since, []), offset)
