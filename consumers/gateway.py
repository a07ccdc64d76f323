"""The gateway: verifies submitted documents and routes them by jurisdiction (DESIGN §8)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from bus.kafka.records import status_output
from bus.kafka.runtime import Output, Record, Reject, Result, where
from bus.kafka.topics import Topics
from bus.registry import Registry, vietnam_date
from bus.trust.signing import SigningKey
from bus.trust.verifier import Rejected, Verifier
from bus.wire.errors import DocbusError, Misconfigured, Reason
from bus.wire.headers import RECEIPT, cloudevent, header
from bus.wire.model import Document, Status, StatusCode, event_digest, now_ms

log = structlog.get_logger(__name__)

#: How much of a record over the size limit is still read to name its sender (more than
#: a broker delivers to a consumer by default).
CLAIMED_BYTES = 64 * 1024 * 1024


class Gateway:
    """Verify → resolve recipients → one delivery per jurisdiction + a signed receipt.

    :param verifier: the one verifier (trust store, policy, registry).
    :param registry: resolves recipients to delivery jurisdictions.
    :param key: the gateway's SERVICE key; its certificate's agency code is the ``by``
        of every status it signs.
    """

    stage = "gateway"

    def __init__(
        self, verifier: Verifier, registry: Registry, key: SigningKey, topics: Topics
    ) -> None:
        if key.agency is None:
            raise Misconfigured("the gateway's certificate carries no organizationIdentifier")
        self.verifier = verifier
        self.registry = registry
        self.key = key
        self.by = key.agency
        self.topics = topics
        self._large = verifier.codec.with_limit(CLAIMED_BYTES)

    def use(self, registry: Registry) -> None:
        """Route by ``registry`` from the next record on (a newer directory, DESIGN §13)."""
        self.registry = registry
        self.verifier.use_registry(registry)

    async def handle(self, records: Sequence[Record]) -> Sequence[Result]:
        # Verification and signing are CPU work: off the event loop, one batch at a time.
        return await asyncio.to_thread(self._process, records)

    def _process(self, records: Sequence[Record]) -> list[Result]:
        return [result for record in records for result in self._one(record)]

    def _one(self, record: Record) -> list[Result]:
        received = now_ms()
        verdict = self.verifier.verify(record.value or b"", received)
        if isinstance(verdict, Rejected):
            return self._reject(record, verdict.reason, verdict.message, verdict.payload)
        doc = verdict.payload
        if not isinstance(doc, Document):
            return self._reject(record, Reason.POLICY, "only documents are submitted", None)
        try:
            resolutions = [
                self.registry.resolve(code, vietnam_date(doc.issued_at))
                for code in (*doc.recipients, *doc.cc)
            ]
        except DocbusError as exc:
            return self._reject(record, exc.reason, exc.message, doc)
        jurisdictions = list(dict.fromkeys(r.jurisdiction.id for r in resolutions))
        rerouted = {r.asked: r.agency.code for r in resolutions if r.rerouted}
        status = Status(
            document_id=doc.document_id,
            revision=doc.revision,
            code=StatusCode.DELIVERED,
            by=self.by,
            at=received,
            message=f"delivered to {', '.join(jurisdictions)}",
            rerouted=rerouted,
            event_digest=event_digest(record.value or b""),
        )
        receipt = status_output(status, self.key, self.topics, doc.sender)
        headers = cloudevent(doc, doc.sender, doc.issued_at)
        trace = header(record.headers, "traceparent")
        if trace is not None:
            headers = [(k, trace if k == "traceparent" else v) for k, v in headers]
        # The signed receipt travels with the record: its readers verify at this time.
        headers.append((RECEIPT, receipt.value))
        results: list[Result] = [
            Output(self.topics.deliver(j), doc.document_id.encode(), record.value or b"", headers)
            for j in jurisdictions
        ]
        log.info(
            "delivered",
            document_id=doc.document_id,
            jurisdictions=jurisdictions,
            rerouted=rerouted,
            **where(record),
        )
        results.append(receipt)
        return results

    def _reject(
        self, record: Record, reason: Reason, message: str, payload: Document | Status | None
    ) -> list[Result]:
        # The runtime says each rejection once, with its reason, as it dead-letters it.
        results: list[Result] = [Reject(record, reason, message)]
        if payload is None and reason is Reason.TOO_LARGE:
            # Refused unread, but its sender must hear why: what it claims to be names the
            # sender, and the status answers these exact bytes, which only it holds.
            claimed = self._large.claims(record.value or b"")
            payload = claimed if isinstance(claimed, Document) else None
        if isinstance(payload, Document):
            status = Status(
                document_id=payload.document_id,
                revision=payload.revision,
                code=StatusCode.REJECTED,
                by=self.by,
                at=now_ms(),
                reason=reason.value,
                message=message,
                event_digest=event_digest(record.value or b""),
            )
            results.append(status_output(status, self.key, self.topics, payload.sender))
        return results
