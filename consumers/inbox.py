"""An agency's inbox: keeps the documents addressed to it, stores them, says RECEIVED."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from bus.kafka.clients import KafkaSettings
from bus.kafka.records import send_once, status_output
from bus.kafka.runtime import Output, Record, Reject, Result, where
from bus.kafka.topics import Topics
from bus.registry import Registry, vietnam_date
from bus.store.blobs import BlobStore
from bus.store.lifecycle import State, states
from bus.trust.sealing import EncryptionKey, open_sealed
from bus.trust.signing import SigningKey
from bus.trust.verifier import Rejected, Verified, Verifier
from bus.wire.codec import default_codec
from bus.wire.errors import DocbusError, Misconfigured, Reason
from bus.wire.headers import RECEIPT, header
from bus.wire.model import Action, Document, Status, StatusCode, event_digest, now_ms
from bus.wire.names import attachment_files, check_names, path_segment
from consumers.edxml import document_to_edxml
from consumers.received import ReceivedIndex

log = structlog.get_logger(__name__)

#: The feedback an agency system sends after RECEIVED (edXML codes 03-06).
FEEDBACK = (StatusCode.ACCEPTED, StatusCode.ASSIGNED, StatusCode.PROCESSING, StatusCode.COMPLETED)


def document_folder(root: Path, sender: str, document_id: str, revision: int) -> Path:
    """Where an inbox keeps one revision of a document: identity is (sender, document_id,
    revision), so another agency reusing an id never lands in the same folder (ids may
    hold '/', so they are quoted)."""
    return root / path_segment(sender) / path_segment(document_id) / str(revision)


def revision_states(
    root: Path, sender: str, document_id: str
) -> dict[int, tuple[State, int | None]]:
    """The state of each revision an inbox holds of one document from one sender: which is
    in force, which a later UPDATE or REPLACE superseded, which a REVOKE withdrew."""
    folder = document_folder(root, sender, document_id, 0).parent
    held: list[tuple[int, Action]] = []
    for r in folder.iterdir() if folder.is_dir() else ():
        meta = r / "document.json"
        if not (r.name.isdigit() and meta.is_file() and (r / "event.avro").is_file()):
            continue
        # Folders kept before the action was noted: an original is NEW, a revision amends.
        action = json.loads(meta.read_text("utf-8")).get("action")
        held.append((int(r.name), Action(action or ("NEW" if r.name == "0" else "UPDATE"))))
    return states(held)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class Inbox:
    """The receiving side of one agency.

    :param agency: the agency code; documents addressed to it or to any of its
        predecessors (agencies merged into it) are kept.
    :param key: the agency's AGENCY key, which signs its statuses.
    :param folder: where documents are stored, one folder per document revision.
    :param decrypt_key: the agency's encryption key, to open sealed documents.
    :param previous_keys: its earlier encryption keys (before a renewal the directory
        published): what was sealed to them still opens.
    :param edxml_dir: also write each received document there as edXML, where a legacy
        document management system picks it up.
    """

    stage = "inbox"

    def __init__(
        self,
        agency: str,
        registry: Registry,
        verifier: Verifier,
        key: SigningKey,
        folder: Path,
        topics: Topics,
        blobs: BlobStore,
        decrypt_key: EncryptionKey | None = None,
        edxml_dir: Path | None = None,
        index: ReceivedIndex | None = None,
        previous_keys: Sequence[EncryptionKey] = (),
    ) -> None:
        if key.agency != agency:
            raise Misconfigured(f"the key is for {key.agency}, not {agency}")
        self.agency = agency
        self.verifier = verifier
        #: Every jurisdiction this inbox has belonged to while it ran: documents dated
        #: before a merger still go to the old one's topic, and are still read.
        self.jurisdictions: list[str] = []
        self.use(registry)
        self.key = key
        self.folder = folder
        self.topics = topics
        self.blobs = blobs
        self.decrypt_key = decrypt_key
        self.decrypt_keys = (*([decrypt_key] if decrypt_key else []), *previous_keys)
        self.edxml_dir = edxml_dir
        self.index = index
        if edxml_dir is not None:
            edxml_dir.mkdir(parents=True, exist_ok=True)
        folder.mkdir(parents=True, exist_ok=True)

    def use(self, registry: Registry) -> None:
        """Take ``registry`` (a newer directory, DESIGN §13): the agencies merged into this
        one, and its jurisdictions from today on (a merger named ahead included), added to
        those it reads."""
        self.registry = registry
        self.accepts = {self.agency} | registry.predecessors(self.agency)
        today = vietnam_date(now_ms())
        self.jurisdiction = registry.resolve(self.agency, today).jurisdiction.id
        for jurisdiction in registry.jurisdictions_from(self.agency, today):
            if jurisdiction not in self.jurisdictions:
                self.jurisdictions.append(jurisdiction)
        self.verifier.use_registry(registry)

    @property
    def topic(self) -> str:
        return self.topics.deliver(self.jurisdiction)

    @property
    def delivery_topics(self) -> list[str]:
        """The delivery topics of every jurisdiction it has belonged to."""
        return [self.topics.deliver(j) for j in self.jurisdictions]

    async def handle(self, records: Sequence[Record]) -> Sequence[Result]:
        return await asyncio.to_thread(self._process, records)

    def _process(self, records: Sequence[Record]) -> list[Result]:
        results: list[Result] = []
        for record in records:
            claimed = self.verifier.codec.claims(record.value or b"")
            if isinstance(claimed, Document) and not self.accepts & {
                *claimed.recipients,
                *claimed.cc,
            }:
                continue  # another agency's document on the shared jurisdiction topic
            verdict = self.verifier.verify_delivered(
                record.value or b"", header(record.headers, RECEIPT)
            )
            if isinstance(verdict, Rejected):
                results.append(Reject(record, verdict.reason, verdict.message))
                continue
            doc = verdict.payload
            if not isinstance(doc, Document) or not self.accepts & {*doc.recipients, *doc.cc}:
                continue  # another agency's document on the shared jurisdiction topic
            if not self._follows(doc):
                message = (
                    f"revision {doc.revision} of {doc.document_id} follows no earlier revision "
                    f"from {doc.sender} or its predecessors in this inbox"
                )
                results.append(Reject(record, Reason.POLICY, message))
                continue
            digest = event_digest(record.value or b"")
            try:
                doc, note = self.open(doc)
                self._store(doc, record.value or b"", note, verification(verdict))
            except DocbusError as exc:  # a blob missing or altered: the sender hears why
                results.append(Reject(record, exc.reason, exc.message))
                results.append(
                    self.status(
                        doc,
                        StatusCode.REJECTED,
                        exc.message,
                        digest,
                        exc.reason.value,
                    )
                )
                continue
            log.info(
                "received",
                document_id=doc.document_id,
                agency=self.agency,
                sealed=note,
                **where(record),
            )
            results.append(self.status(doc, StatusCode.RECEIVED, note, digest))
        return results

    def _follows(self, doc: Document) -> bool:
        """Revision 0, or one after a revision this inbox holds from the same sender (or a
        predecessor of it): nobody revises or revokes another agency's document."""
        if doc.revision == 0:
            return True
        senders = {doc.sender} | self.registry.predecessors(doc.sender)
        for sender in senders:
            held = document_folder(self.folder, sender, doc.document_id, 0).parent
            if held.is_dir() and any(
                r.name.isdigit() and int(r.name) < doc.revision and (r / "event.avro").exists()
                for r in held.iterdir()
            ):
                return True
        return False

    def open(self, doc: Document) -> tuple[Document, str | None]:
        """The plaintext of a sealed document addressed to this agency, when it can open it."""
        sealed = doc.sealed
        if sealed is None:
            return doc, None
        if not self.decrypt_keys:
            return doc, "sealed; this inbox has no encryption key"
        doc = self.blobs.inline(doc)  # sealed parts are opened in one piece
        for code in sorted(self.accepts & {k.agency for k in sealed.keys}):
            for key in self.decrypt_keys:  # the current key first, then earlier ones
                try:
                    opened = open_sealed(doc, key, code)[1]
                    check_names(opened)  # the sealed names: unseen by the gateway
                    return opened, None
                except DocbusError as exc:
                    failure = exc.message
            log.error("cannot open", document_id=doc.document_id, error=failure)
        return doc, "sealed; it does not open with this inbox's keys"

    def _store(
        self,
        doc: Document,
        event: bytes,
        note: str | None,
        verified: dict[str, Any] | None = None,
    ) -> None:
        target = document_folder(self.folder, doc.sender, doc.document_id, doc.revision)
        if (target / "event.avro").exists():
            return  # re-delivery: already kept (and indexed)
        (target / "attachments").mkdir(parents=True, exist_ok=True)
        names = attachment_files([a.name for a in doc.attachments])
        for a, name in zip(doc.attachments, names, strict=True):
            if a.content is not None:
                write_atomically(target / "attachments" / name, a.content)
            elif a.in_blob_store:
                self.blobs.copy_to(a.sha256, a.size, target / "attachments" / name)
        meta = {
            "document_id": doc.document_id,
            "revision": doc.revision,
            "sender": doc.sender,
            "recipients": list(doc.recipients),
            "subject": doc.subject,
            "confidentiality": doc.confidentiality.value,
            "sealed": doc.sealed is not None,
            "action": doc.action.value,
            "note": note,
            "code_number": doc.code_number,
            "issued_at": doc.issued_at.isoformat(),
            "due_date": doc.due_date.isoformat() if doc.due_date else None,
            "attachments": [a.name for a in doc.attachments],
            "files": names,
            "media_types": [a.media_type for a in doc.attachments],
            "verification": verified,
        }
        write_atomically(
            target / "document.json", json.dumps(meta, ensure_ascii=False, indent=2).encode()
        )
        if self.edxml_dir is not None:
            name = path_segment(f"{doc.sender}-{doc.document_id}-r{doc.revision}") + ".edxml"
            write_atomically(self.edxml_dir / name, document_to_edxml(doc))
        write_atomically(target / "event.avro", event)  # last: its presence means complete
        if self.index is not None:
            self.index.add(
                doc.sender,
                doc.document_id,
                doc.revision,
                doc.subject,
                now_ms(),
                verified or {},
                doc.due_date,
            )

    def status(
        self,
        doc: Document,
        code: StatusCode,
        message: str | None = None,
        digest: bytes | None = None,
        reason: str | None = None,
    ) -> Output:
        """A status about a received document (the record of ``digest``), signed by this
        agency, for its sender."""
        status = Status(
            doc.document_id,
            code,
            self.agency,
            now_ms(),
            doc.revision,
            reason=reason,
            message=message,
            event_digest=digest,
        )
        return status_output(status, self.key, self.topics, doc.sender)


async def send_status(
    settings: KafkaSettings,
    key: SigningKey,
    document_id: str,
    revision: int,
    code: StatusCode,
    record: bytes,
    message: str | None = None,
) -> None:
    """Send ACCEPTED, ASSIGNED, PROCESSING or COMPLETED for a received document: the
    status answers ``record``, the exact event received (its ``event.avro``)."""
    if code not in FEEDBACK:
        raise Misconfigured(f"{code.value} is not agency feedback ({', '.join(FEEDBACK)})")
    if key.agency is None:
        raise Misconfigured("the key's certificate carries no agency code")
    status = Status(
        document_id,
        code,
        key.agency,
        now_ms(),
        revision,
        message=message,
        event_digest=event_digest(record),
    )
    codec = default_codec()
    sender = codec.decode_document(codec.decode_event(record).payload).sender
    await send_once(settings, status_output(status, key, settings.topics, sender))


def verification(verdict: Verified) -> dict[str, Any]:
    """What the inbox checked, kept beside the document: who signed in which role, and the
    receipt time the gateway signed."""
    return {
        "verified": True,
        "received_at": verdict.at.isoformat(),
        "signers": [
            {
                "role": s.role.value,
                "alg": s.alg.value,
                "agency": s.agency,
                "subject": s.subject,
                "key_id": s.key_id,
            }
            for s in verdict.signers
        ],
    }
