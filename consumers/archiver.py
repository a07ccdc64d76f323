"""The archiver: stores every delivered document once and answers with ARCHIVED."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from bus.kafka.records import status_output
from bus.kafka.runtime import Output, Record, Reject, Result, where
from bus.kafka.topics import Topics
from bus.store.archive import Archive
from bus.store.blobs import BlobStore
from bus.store.documents import NewEntry, Stored
from bus.store.log import StoredCheckpoint
from bus.tlog.checkpoint import Checkpoint
from bus.trust.signing import SigningKey, note_signer
from bus.trust.verifier import Rejected, Verifier
from bus.wire.errors import DocbusError, Misconfigured, Reason
from bus.wire.headers import RECEIPT, header, log_headers
from bus.wire.model import Document, LogProof, Status, StatusCode, event_digest, now_ms

log = structlog.get_logger(__name__)

_REPUBLISHED_KEPT = 4096


class Archiver:
    """Reads every delivery topic; one SQLite transaction per batch, then the receipts.

    Every record is verified again, at the receipt time the gateway signed (DESIGN §4):
    a record written straight onto a delivery topic is rejected, never archived. Blob-store
    attachments are copied from the bus's ``blobs`` into the archive's own (``archive.blobs``),
    checked against their signed hashes on the way: a missing or altered blob is REJECTED.
    """

    stage = "archiver"

    def __init__(
        self,
        archive: Archive,
        key: SigningKey,
        topics: Topics,
        verifier: Verifier,
        blobs: BlobStore,
    ) -> None:
        if key.agency is None:
            raise Misconfigured("the archiver's certificate carries no organizationIdentifier")
        self.archive = archive
        self.key = key
        self.by = key.agency
        self.topics = topics
        self.verifier = verifier
        self.blobs = blobs
        self.signer = note_signer(key)  # fails early for a key that cannot sign notes
        # Auditors find the key that signs this log's checkpoints beside them.
        self.chain = key.chain_der
        archive.set_log_key(self.by, self.chain)
        #: Sizes this archiver published again (oldest first): once each is enough, even
        #: when an agency re-sends the same document many times.
        self._republished: dict[int, None] = {}

    async def handle(self, records: Sequence[Record]) -> Sequence[Result]:
        return await asyncio.to_thread(self._process, records)

    def _process(self, records: Sequence[Record]) -> list[Result]:
        results: list[Result] = []
        batch: list[tuple[Record, NewEntry]] = []
        for record in records:
            value = record.value or b""
            verdict = self.verifier.verify_delivered(value, header(record.headers, RECEIPT))
            if isinstance(verdict, Rejected):
                results.append(Reject(record, verdict.reason, verdict.message))
                continue
            doc = verdict.payload
            if not isinstance(doc, Document):
                results.append(Reject(record, Reason.POLICY, "a delivery topic carries documents"))
                continue
            revisers = (doc.sender, *sorted(self._predecessors(doc.sender)))
            receipt = header(record.headers, RECEIPT) or b""
            entry = NewEntry.of(
                doc, value, record.topic, verdict.at, receipt, revisers, verdict.event.payload
            )
            try:
                for a in doc.attachments:
                    if a.in_blob_store:
                        self.archive.blobs.copy_from(self.blobs, a.sha256, a.size)
            except DocbusError as exc:
                results.extend(self._rejected(record, entry, exc.reason, exc.message))
                continue
            batch.append((record, entry))
        if not batch:
            return results
        # The checkpoint is signed in the append's own transaction: with several archivers,
        # the one before it is the one signed just before it, so the published chain holds.
        outcomes, fresh, previous = self.archive.store_signed(
            [entry for _, entry in batch], self._sign
        )
        results.extend(self._republish(outcomes))
        if fresh is not None:
            results.append(self._publish(fresh, previous))
        checkpoint = fresh or previous
        for (record, entry), (outcome, index) in zip(batch, outcomes, strict=True):
            if outcome is Stored.REFUSED:
                results.extend(self._refuse(record, entry))
                continue
            assert checkpoint is not None  # the log holds this entry: a checkpoint covers it
            proof = LogProof(
                index=index,
                tree_size=checkpoint.checkpoint.size,
                root_hash=checkpoint.checkpoint.root,
                inclusion_proof=tuple(
                    self.archive.inclusion_proof(index, checkpoint.checkpoint.size)
                ),
                checkpoint=checkpoint.signed,
            )
            results.extend(self._answer(record, entry, outcome, proof))
        return results

    def _republish(self, outcomes: Sequence[tuple[Stored, int]]) -> list[Output]:
        """Publish again the checkpoints that first covered this batch's re-deliveries.

        A re-delivery may mean that the archiver which appended it was killed after its
        commit and before its outputs were sent: the checkpoint signed with it never
        reached the topic, and every witness waits for it, since the next one's proof
        starts from it. Witnesses ignore a checkpoint they have already accepted."""
        outputs: list[Output] = []
        covered = -1
        for index in sorted(i for outcome, i in outcomes if outcome is Stored.DUPLICATE):
            if index < covered:
                continue  # covered by the checkpoint just re-published
            found = self.archive.covering_checkpoint(index)
            if found is None:
                break
            checkpoint, before = found
            covered = checkpoint.checkpoint.size
            if covered not in self._republished:
                self._republished[covered] = None
                outputs.append(self._publish(checkpoint, before))
                log.info("checkpoint published again", size=covered)
        while len(self._republished) > _REPUBLISHED_KEPT:
            del self._republished[next(iter(self._republished))]
        return outputs

    def _publish(self, new: StoredCheckpoint, previous: StoredCheckpoint | None) -> Output:
        """The checkpoint for the checkpoint topic, with what a witness needs to check it:
        the log key's certificate and a consistency proof from the checkpoint before."""
        since = previous.checkpoint.size if previous is not None else 0
        proof = self.archive.consistency_proof(since, new.checkpoint.size) if since else []
        return Output(
            self.topics.checkpoints,
            self.by.encode(),
            new.signed,
            log_headers(self.chain, since, proof),
        )

    def _predecessors(self, sender: str) -> set[str]:
        registry = self.verifier.registry
        return registry.predecessors(sender) if registry is not None else set()

    def _refuse(self, record: Record, entry: NewEntry) -> list[Result]:
        message = (
            f"revision {entry.revision} of {entry.document_id} follows no earlier revision "
            f"archived from {entry.sender} or its predecessors"
        )
        return self._rejected(record, entry, Reason.POLICY, message)

    def _rejected(
        self,
        record: Record,
        entry: NewEntry,
        reason: Reason,
        message: str,
        proof: LogProof | None = None,
    ) -> list[Result]:
        """The record to the rejected topic, and a REJECTED status for its exact bytes."""
        status = Status(
            entry.document_id,
            StatusCode.REJECTED,
            self.by,
            now_ms(),
            entry.revision,
            reason=reason.value,
            message=message,
            log=proof,
            event_digest=event_digest(entry.event),
        )
        output = status_output(status, self.key, self.topics, entry.sender)
        return [Reject(record, reason, message), output]

    def _sign(self, size: int, root: bytes) -> tuple[Checkpoint, bytes]:
        checkpoint = Checkpoint(self.by, size, root)
        return checkpoint, checkpoint.sign(self.signer)

    def _answer(
        self, record: Record, entry: NewEntry, outcome: Stored, proof: LogProof
    ) -> list[Result]:
        log.info(
            "archived",
            document_id=entry.document_id,
            outcome=outcome.value,
            index=proof.index,
            **where(record),
        )
        if outcome is Stored.CONFLICT:
            message = f"revision {entry.revision} was archived before with other bytes"
            return self._rejected(record, entry, Reason.DUPLICATE_CONFLICT, message, proof)
        # A re-delivery is answered again: the publisher may have missed the first receipt.
        status = Status(
            entry.document_id,
            StatusCode.ARCHIVED,
            self.by,
            now_ms(),
            entry.revision,
            log=proof,
            event_digest=event_digest(entry.event),
        )
        return [status_output(status, self.key, self.topics, entry.sender)]
