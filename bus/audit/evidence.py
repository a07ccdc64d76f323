"""Evidence bundles (DESIGN §12): one document's proof in one file, checked offline.

A bundle holds the exact signed record, the gateway's signed receipt for those bytes, the
archiver's log key (certificate chain), a checkpoint note signed by it, and the inclusion
proof of the record's leaf against that checkpoint. With nothing but a trust store,
:func:`check_evidence` proves that the document was signed by whom it says, received by
the pinned gateway at the time it says, and is in the archive's append-only log.

The file is canonical JSON (sorted keys, no spaces, UTF-8): a bundle that is not byte for
byte its own canonical form is refused, so any changed byte is caught, whether or not it
would have changed a signature.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bus.store.archive import Archive
from bus.tlog.merkle import leaf_hash, verify_inclusion
from bus.trust.verifier import Rejected, Verified, Verifier
from bus.wire.errors import DocbusError, Reason
from bus.wire.model import Document

FORMAT = "docbus-evidence/1"
_FIELDS = {"format", "record", "receipt", "log_key", "checkpoint", "index", "tree_size", "proof"}


@dataclass(frozen=True)
class Evidence:
    record: bytes
    receipt: bytes
    log_key: tuple[bytes, ...]
    checkpoint: bytes
    index: int
    tree_size: int
    proof: tuple[bytes, ...]

    def to_bytes(self) -> bytes:
        b64 = base64.b64encode
        body = {
            "format": FORMAT,
            "record": b64(self.record).decode(),
            "receipt": b64(self.receipt).decode(),
            "log_key": [b64(c).decode() for c in self.log_key],
            "checkpoint": self.checkpoint.decode("utf-8"),
            "index": self.index,
            "tree_size": self.tree_size,
            "proof": [b64(h).decode() for h in self.proof],
        }
        return _canonical(body)

    @classmethod
    def from_bytes(cls, data: bytes) -> Evidence:
        """Raises DocbusError (malformed) for anything but a canonical bundle."""
        try:
            body = json.loads(data)
            if not isinstance(body, dict) or set(body) != _FIELDS or body["format"] != FORMAT:
                raise ValueError("not a docbus evidence bundle")
            b64 = base64.b64decode
            evidence = cls(
                record=b64(body["record"], validate=True),
                receipt=b64(body["receipt"], validate=True),
                log_key=tuple(b64(c, validate=True) for c in body["log_key"]),
                checkpoint=str(body["checkpoint"]).encode("utf-8"),
                index=int(body["index"]),
                tree_size=int(body["tree_size"]),
                proof=tuple(b64(h, validate=True) for h in body["proof"]),
            )
            # Encoded again, it must be these very bytes: spacing, key order and the spare
            # bits of base64 (which decoding ignores) are all pinned down.
            if evidence.to_bytes() != data:
                raise ValueError("not in canonical form: a byte was changed")
            return evidence
        except (ValueError, TypeError, KeyError) as exc:
            raise DocbusError(Reason.MALFORMED, f"evidence bundle: {exc}") from None


@dataclass(frozen=True)
class Proven:
    """What a bundle proves."""

    document: Document
    verified: Verified
    received_at: datetime
    origin: str
    index: int
    tree_size: int


def export_evidence(
    archive: Archive, document_id: str, revision: int = 0, sender: str | None = None
) -> Evidence:
    """The bundle of one archived document against the archive's latest checkpoint.

    Raises DocbusError (policy) when it is not archived, ambiguous or not yet covered.
    """
    found = [
        e
        for e in archive.find(document_id)
        if e.revision == revision and not e.conflict and sender in (None, e.sender)
    ]
    if not found:
        raise DocbusError(Reason.POLICY, f"{document_id} revision {revision} is not archived")
    if len({e.sender for e in found}) > 1:
        raise DocbusError(Reason.POLICY, "several senders used this id: name the sender")
    entry = found[0]
    latest = archive.latest_checkpoint()
    if latest is None or entry.log_index >= latest.checkpoint.size:
        raise DocbusError(Reason.POLICY, "no checkpoint covers this document yet")
    size = latest.checkpoint.size
    return Evidence(
        record=entry.event,
        receipt=entry.receipt,
        log_key=tuple(archive.log_key(latest.checkpoint.origin)),
        checkpoint=latest.signed,
        index=entry.log_index,
        tree_size=size,
        proof=tuple(archive.inclusion_proof(entry.log_index, size)),
    )


def check_evidence(evidence: Evidence, verifier: Verifier) -> Proven:
    """Check a bundle against a trust store (through ``verifier``). Raises DocbusError
    naming the first thing that does not hold."""
    verdict = verifier.verify_delivered(evidence.record, evidence.receipt)
    if isinstance(verdict, Rejected):
        raise DocbusError(verdict.reason, verdict.message)
    document = verdict.payload
    if not isinstance(document, Document):
        raise DocbusError(Reason.POLICY, "the record is not a document")
    # Every certificate given must be on a path that was checked: none rides along unproven.
    receipt = verifier.codec.decode_event(evidence.receipt)
    for chain in (evidence.log_key, *(s.cert_chain for s in receipt.signatures)):
        if set(chain) - set(verifier.chain_path(chain)):
            raise DocbusError(Reason.MALFORMED, "a certificate in the bundle proves nothing")
    checkpoint = verifier.verify_checkpoint(evidence.checkpoint, evidence.log_key, strict=True)
    if checkpoint.size != evidence.tree_size:
        raise DocbusError(Reason.POLICY, "the proof is not against the checkpoint given")
    if not verify_inclusion(
        leaf_hash(evidence.record),
        evidence.index,
        evidence.tree_size,
        list(evidence.proof),
        checkpoint.root,
    ):
        raise DocbusError(Reason.POLICY, "the record is not in the log at the place given")
    return Proven(
        document, verdict, verdict.at, checkpoint.origin, evidence.index, evidence.tree_size
    )


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
