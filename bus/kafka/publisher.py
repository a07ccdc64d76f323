"""The publisher: sign, keep in the outbox, send, listen for statuses, re-send until answered.

Every agency-side sender uses it: ``docbus publish``, the edXML bridge and the agency node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Protocol

import structlog
from aiokafka import AIOKafkaProducer

from bus.kafka.clients import KafkaSettings, connected
from bus.kafka.errors import classified
from bus.kafka.records import document_record
from bus.kafka.runtime import ConsumerRuntime, Record, Reject, Result
from bus.store.blobs import BlobStore
from bus.store.group import GroupWriter
from bus.store.outbox import Outbox, OutboxEntry, State
from bus.trust.signing import SigningKey
from bus.trust.verifier import Rejected, Verified, Verifier
from bus.wire.codec import default_codec
from bus.wire.errors import BusError, DocbusError
from bus.wire.headers import cloudevent
from bus.wire.limits import BLOB_THRESHOLD
from bus.wire.model import Document, Role, Status, StatusCode, now_ms

log = structlog.get_logger(__name__)


class Inbound(Protocol):
    """Statuses about documents this side received rather than sent (a sender's request to
    withdraw one, edXML 13): whether one is wanted, before paying for verification, and
    what to do with it once verified."""

    def wants(self, status: Status) -> bool: ...

    def take(self, verdict: Verified, record: bytes) -> None: ...


class StatusListener:
    """Applies verified statuses about this outbox's documents; wakes whoever waits.

    :param inbound: also hands it the statuses it wants about documents received here.
    """

    stage = "outbox"

    def __init__(self, outbox: Outbox, verifier: Verifier, inbound: Inbound | None = None) -> None:
        self.outbox = outbox
        self.verifier = verifier
        self.inbound = inbound
        self._final: dict[tuple[str, int], asyncio.Event] = {}

    def waiter(self, document_id: str, revision: int) -> asyncio.Event:
        return self._final.setdefault((document_id, revision), asyncio.Event())

    async def handle(self, records: Sequence[Record]) -> Sequence[Result]:
        applied = await asyncio.to_thread(self._process, records)
        results: list[Result] = []
        for item in applied:
            if isinstance(item, Reject):
                results.append(item)
            elif item.state is not State.PENDING:
                # Only those waiting hold an event: one per answered document would grow
                # without bound in a long-running node.
                event = self._final.pop((item.document_id, item.revision), None)
                if event is not None:
                    event.set()
        return results

    def _process(self, records: Sequence[Record]) -> list[OutboxEntry | Reject]:
        out: list[OutboxEntry | Reject] = []
        verified: list[tuple[Status, bool]] = []
        held: list[Record] = []
        for record in records:
            claimed = self.verifier.codec.claims(record.value or b"")
            inbound = (
                self.inbound is not None
                and isinstance(claimed, Status)
                and self.inbound.wants(claimed)
            )
            if (
                isinstance(claimed, Status)
                and not inbound
                and not self.outbox.knows(claimed.document_id, claimed.revision)
            ):
                continue  # about another sender's document: not worth verifying here
            verdict = self.verifier.verify(record.value or b"", now_ms())
            if isinstance(verdict, Rejected):
                out.append(Reject(record, verdict.reason, verdict.message))
                continue
            if inbound and self.inbound is not None:
                self.inbound.take(verdict, record.value or b"")
                continue
            if isinstance(verdict.payload, Status) and self._proven(verdict):
                by_service = any(s.role is Role.SERVICE for s in verdict.signers)
                verified.append((verdict.payload, by_service))
                held.append(record)
        # The batch's statuses in one transaction: one fsync, not one per status.
        applied = self.outbox.apply_many(verified) if verified else []
        for record, (status, _), entry in zip(held, verified, applied, strict=True):
            if isinstance(entry, DocbusError):
                out.append(Reject(record, entry.reason, entry.message))
            elif entry is not None:
                log.info(
                    "status", document_id=entry.document_id, code=status.code.value, by=status.by
                )
                out.append(entry)
        return out

    def _proven(self, verdict: Verified) -> bool:
        """An ARCHIVED receipt counts only if it proves our exact record is in the log."""
        status = verdict.payload
        assert isinstance(status, Status)
        if status.code is not StatusCode.ARCHIVED:
            return True
        mine = self.outbox.get(status.document_id, status.revision)
        if mine is None:
            return True  # not ours: apply() ignores it
        try:
            self.verifier.check_receipt(verdict, mine.record)
        except DocbusError as exc:
            log.error(
                "ARCHIVED receipt does not prove the archive holds the document",
                document_id=status.document_id,
                error=exc.message,
            )
            return False
        return True


class Publisher:
    """Publishes signed documents with at-least-once delivery until a final status.

    :param settings: how to reach Kafka.
    :param outbox: the durable outbox.
    :param keys: the signing keys (SIGNER, AGENCY, any co-signers).
    :param verifier: verifies the statuses (they are signed receipts).
    :param resend_after: re-send an unanswered record after this long.
    :param deadline: raise an alarm (log error) for records unanswered this long.
    :param blobs: where attachments over the threshold go (else they travel inline).
    :param inbound: takes the statuses about documents received here (the agency node's).
    :param audiences: the agency codes whose statuses to read (default: the keys' agency).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        outbox: Outbox,
        keys: Sequence[SigningKey],
        verifier: Verifier,
        resend_after: timedelta = timedelta(seconds=30),
        deadline: timedelta = timedelta(minutes=10),
        blobs: BlobStore | None = None,
        blob_threshold: int = BLOB_THRESHOLD,
        inbound: Inbound | None = None,
        audiences: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.keys = list(keys)
        self.resend_after = resend_after
        self.deadline = deadline
        self.blobs = blobs
        self.blob_threshold = blob_threshold
        self.listener = StatusListener(outbox, verifier, inbound)
        agency = next(filter(None, (k.agency for k in keys)), None)
        self.runtime = ConsumerRuntime(
            settings,
            self.listener,
            # Named per agency, so its ACL grants it its own groups and no other's.
            f"docbus.outbox.{agency or 'any'}.{outbox.id}",
            topics=[settings.topics.status],
            keep=blobs,
            # Statuses are keyed by whom they are for: an agency reads its share only.
            audiences=audiences or ([agency] if agency else None),
        )
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Sends in flight, one per record: a broker short of replicas holds a send for up to
        # its request timeout, and neither a request nor the re-send loop waits for that.
        self._sending: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        # Group commit: the records queued while one transaction runs share the next.
        self._adding = GroupWriter(outbox.add_many)
        self._marking = GroupWriter(outbox.mark_sent_many)

    async def start(self, listen: bool = True) -> None:
        """Connect; with ``listen``, also follow the statuses and re-send until answered.

        With ``listen`` (a long-running sender) a broker that is down is waited for, as
        every service waits (DESIGN §7); documents queued meanwhile are durable in the
        outbox and sent once it answers. Without it the publisher only queues and sends (a
        one-shot command, which says at once that the broker is unavailable); whoever
        listens later re-sends from the outbox.
        """
        if not listen:
            await self.settings.learn_idempotence()
            producer = self.settings.producer()
            try:
                await producer.start()
            except BaseException:
                await producer.stop()  # never left unclosed
                raise
            self._producer = producer
            return
        self._producer = await connected(
            self.settings, self.settings.producer, self._stopping, "publisher"
        )
        if self._producer is None:
            return  # stopped before the broker came up
        self._tasks = [
            asyncio.create_task(self.runtime.run()),
            asyncio.create_task(self._resend_loop()),
        ]
        await asyncio.wait(
            [asyncio.create_task(self.runtime.started.wait()), self._tasks[0]],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self._tasks[0].done():
            self._tasks[0].result()

    @property
    def connected(self) -> bool:
        """Whether the producer is up (before that, documents wait in the outbox)."""
        return self._producer is not None

    async def stop(self) -> None:
        self._stopping.set()
        self.runtime.request_stop()
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._sending.values(), return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()

    async def publish(self, document: Document) -> bytes:
        """Sign, keep in the outbox, send. Returns the record; sent again until answered.

        Raises ``too_large`` (DocbusError) before anything is sent for a document over the
        bounds. Once this returns the document is durable and its send under way (``stop``
        waits for it): a failed send is logged and retried by the re-send loop, never raised.
        """
        document, record = await asyncio.to_thread(self.signed, document)
        await self.publish_record(document, record)
        return record

    def signed(self, document: Document) -> tuple[Document, bytes]:
        """``document`` with its large attachments in the blob store, and its signed record
        (blocking: run it in a worker thread, with whatever else the caller does there)."""
        if self.blobs is not None:
            document = self.blobs.offload(document, self.blob_threshold)
        return document, document_record(document, self.keys)

    async def publish_record(self, document: Document, record: bytes) -> None:
        """Keep and send a record signed elsewhere (``document`` is what it carries)."""
        entry = (document.document_id, document.revision, document.sender, document.recipients)
        await self._adding.put((*entry, record))
        self._start_send(document.document_id, document.revision, record)

    def _start_send(self, document_id: str, revision: int, record: bytes) -> None:
        key = (document_id, revision)
        if self._producer is None or key in self._sending:
            return  # no broker yet, or a send already under way: the re-send loop follows up
        task = asyncio.create_task(self._send(document_id, revision, record))
        self._sending[key] = task
        task.add_done_callback(lambda _: self._sending.pop(key, None))

    async def _send(self, document_id: str, revision: int, record: bytes) -> None:
        assert self._producer is not None
        doc = default_codec().decode_document(default_codec().decode_event(record).payload)
        try:
            await self._producer.send_and_wait(
                self.settings.topics.submitted,
                record,
                key=document_id.encode(),
                headers=cloudevent(doc, doc.sender, now_ms()),
            )
        except Exception as exc:
            # Kept in the outbox whatever the reason: re-sent until it is answered.
            log.warning(
                "send failed; will re-send",
                document_id=document_id,
                error=str(classified(exc) or exc),
            )
            return
        await self._marking.put((document_id, revision))

    async def wait(self, document_id: str, revision: int = 0) -> OutboxEntry:
        """Wait for the final status (ARCHIVED or REJECTED); bound it with asyncio.timeout."""
        entry = self.outbox.get(document_id, revision)
        if entry is None:
            raise KeyError(f"{document_id} revision {revision} is not in the outbox")
        if entry.state is State.PENDING:
            # Registered in the same step as the read: the listener sets it on the answer.
            await self.listener.waiter(document_id, revision).wait()
            entry = self.outbox.get(document_id, revision)
        assert entry is not None
        return entry

    async def resend_due(self) -> int:
        """Send again every entry unanswered for ``resend_after``; alarm on overdue ones."""
        due = await asyncio.to_thread(self.outbox.due, self.resend_after)
        for entry in due:
            log.info("re-sending", document_id=entry.document_id, attempts=entry.attempts)
            self._start_send(entry.document_id, entry.revision, entry.record)
        for entry in await asyncio.to_thread(self.outbox.newly_overdue, self.deadline):
            log.error(
                "ALARM: no final status within the deadline",
                document_id=entry.document_id,
                sent=entry.attempts,
                since=entry.created_at.isoformat(),
            )
        return len(due)

    async def _resend_loop(self) -> None:
        period = max(0.2, self.resend_after.total_seconds() / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await self.resend_due()
            except BusError as exc:
                log.warning("re-send round failed", error=str(exc))
