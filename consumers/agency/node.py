"""The agency node (DESIGN §11): one process beside an agency's document management system.

It holds the agency's keys, keeps the outbox and re-sends until each document's fate is
known, follows the statuses, receives the agency's documents (and its predecessors'),
opens sealed ones, and serves the HTTP API of :mod:`consumers.agency.app`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from bus.directory.model import Directory
from bus.kafka.clients import KafkaSettings
from bus.kafka.directory import DirectoryFollower
from bus.kafka.metrics import broker_fresh
from bus.kafka.publisher import Publisher
from bus.kafka.records import send_once, send_outputs, status_output
from bus.kafka.runtime import ConsumerRuntime, publishing, seen_by
from bus.registry import Registry, RegistryError, vietnam_date
from bus.store.blobs import BlobStore
from bus.store.outbox import Outbox
from bus.trust.addressbook import AddressBook
from bus.trust.sealing import EncryptionKey, parties, seal
from bus.trust.signing import SigningKey
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Policy, Rejected, Verified, Verifier
from bus.wire.errors import DocbusError, Misconfigured, Reason
from bus.wire.limits import BLOB_THRESHOLD
from bus.wire.model import (
    Confidentiality,
    Document,
    Role,
    SealSuite,
    Status,
    StatusCode,
    event_digest,
    now_ms,
)
from bus.wire.names import path_segment
from consumers.inbox import FEEDBACK, Inbox, write_atomically
from consumers.received import ReceivedIndex

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class NodeKeys:
    """The files ``docbus pki issue`` writes for one agency (``--keys`` names their folder)."""

    signer: SigningKey
    agency: SigningKey
    encryption: EncryptionKey | None
    #: Earlier encryption keys (``encryption-*.key.pem``), kept after a renewal: what was
    #: sealed to them still opens.
    previous: tuple[EncryptionKey, ...] = ()

    @classmethod
    def load(cls, folder: Path, password: bytes | None = None) -> NodeKeys:
        def pair(role: str) -> tuple[Path, Path]:
            key, cert = folder / f"{role}.key.pem", folder / f"{role}.cert.pem"
            if not key.is_file() or not cert.is_file():
                raise FileNotFoundError(f"no {role} key in {folder} (docbus pki issue writes it)")
            return key, cert

        encryption = folder / "encryption.key.pem"
        return cls(
            signer=SigningKey.load(Role.SIGNER, *pair("signer"), password=password),
            agency=SigningKey.load(Role.AGENCY, *pair("agency"), password=password),
            encryption=(
                EncryptionKey.from_pem(encryption.read_bytes()) if encryption.is_file() else None
            ),
            previous=tuple(
                EncryptionKey.from_pem(path.read_bytes())
                for path in sorted(folder.glob("encryption-*.key.pem"))
            ),
        )


class AgencyNode:
    """The outbox, the status follower and the inbox of one agency, in one process."""

    def __init__(
        self,
        agency: str,
        keys: NodeKeys,
        trust: Path,
        data_dir: Path,
        settings: KafkaSettings,
        registry: Registry,
        blobs: BlobStore,
        address_book: Path | None = None,
        reload_seconds: float = 10,
        blob_threshold: int = BLOB_THRESHOLD,
        directory_file: Path | None = None,
    ) -> None:
        if keys.agency.agency != agency:
            raise Misconfigured(f"the AGENCY key is for {keys.agency.agency}, not {agency}")
        self.agency = agency
        self.keys = keys
        self.trust = trust
        self.settings = settings
        self.registry = registry
        self.blobs = blobs
        self.blob_threshold = blob_threshold
        self.address_book = address_book
        every = timedelta(seconds=reload_seconds)
        statuses = Verifier(TrustStore.load(trust), Policy(issued_at_tolerance=None), registry)
        self.outbox = Outbox(data_dir / "outbox.sqlite")
        self.publisher = Publisher(
            settings,
            self.outbox,
            [keys.signer, keys.agency],
            statuses,
            resend_after=timedelta(seconds=30),
            blobs=blobs,
            blob_threshold=blob_threshold,
            inbound=self,
            audiences=self.audiences,
        )
        self.received = ReceivedIndex(data_dir / "received.sqlite")
        self.inbox = Inbox(
            agency,
            registry,
            Verifier(
                TrustStore.load(trust),
                Policy(issued_at_tolerance=None),
                registry,
                reload_every=every,
            ),
            keys.agency,
            data_dir / "inbox",
            settings.topics,
            blobs,
            keys.encryption,
            index=self.received,
            previous_keys=keys.previous,
        )
        self.inbox_runtime = ConsumerRuntime(
            settings, self.inbox, f"docbus.inbox.{agency}", topics=[self.inbox.topic], keep=blobs
        )
        self.events = Verifier(TrustStore.load(trust), Policy(), registry, reload_every=every)
        #: The national directory in force (DESIGN §13): recipients' encryption certificates.
        self.directory: Directory | None = None
        self.follower = DirectoryFollower(settings, self.events, self.use, directory_file)
        self._tasks: list[asyncio.Task[None]] = []
        #: Why a part of the node stopped for good (then ``failed`` is set).
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()

    @property
    def ready(self) -> bool:
        """The producer is up, both runtimes consume, and the broker answered them lately and
        takes their outputs."""
        runtimes = (self.publisher.runtime, self.inbox_runtime)
        return self.publisher.connected and all(
            r.started.is_set() and broker_fresh(seen_by(r))() and publishing(r)() for r in runtimes
        )

    async def start(self) -> None:
        """Start following the bus, without waiting for it: a broker that is down is waited
        for while the API serves (not ready), and documents queued meanwhile are durable in
        the outbox and sent once it answers (DESIGN §7)."""
        self._tasks = [
            asyncio.create_task(self.inbox_runtime.run()),
            asyncio.create_task(self.publisher.start()),
            asyncio.create_task(self._follow()),
        ]
        for task in self._tasks:
            task.add_done_callback(self._ended)

    async def _follow(self) -> None:
        await self.follower.start()
        await self.follower.run()

    def use(self, directory: Directory) -> None:
        """Resolve and seal by ``directory`` from the next document on."""
        self.directory = directory
        self.registry = directory.parsed
        self.events.use_registry(directory.parsed)
        self.inbox.use(directory.parsed)
        self.inbox_runtime.follow(self.inbox.delivery_topics)
        self.publisher.runtime.narrow(self.audiences)

    @property
    def audiences(self) -> list[str]:
        """Whose statuses this node reads: its agency's, and its predecessors' (what was
        asked of them is asked of it)."""
        return [self.agency, *sorted(self.registry.predecessors(self.agency))]

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A part that stops with an error (a login the broker refuses, an ACL it lacks)
        stops the node: it would never be ready, and no retry cures it."""
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()
            self.failed.set()

    async def stop(self) -> None:
        self.inbox_runtime.request_stop()
        for task in self._tasks[2:]:
            task.cancel()  # the directory follower runs until cancelled
        await self.publisher.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.outbox.close()
        self.received.close()

    def document(self, draft: Document) -> Document:
        """A draft from the agency's system made a document of this agency: a fresh id,
        the recipients known, sealed when confidential."""
        doc = dataclasses.replace(draft, document_id=draft.document_id or str(uuid.uuid4()))
        on = vietnam_date(doc.issued_at)
        for code in (*doc.recipients, *doc.cc):
            try:
                self.registry.resolve(code, on)
            except RegistryError as exc:
                raise DocbusError(Reason.UNKNOWN_RECIPIENT, str(exc)) from None
        if doc.confidentiality in (Confidentiality.NONE, Confidentiality.UNKNOWN):
            return doc
        certificates = self.directory.encryption if self.directory else None
        if self.address_book is None and not certificates:
            raise DocbusError(
                Reason.POLICY, "this node has no directory (or address book) to seal with yet"
            )
        book = AddressBook(self.address_book, TrustStore.load(self.trust), certificates)
        recipients = [book.recipient(p, now_ms()) for p in parties(doc)]
        return seal(doc, recipients, SealSuite.X25519_SHA256_AES256GCM)

    async def queue(self, draft: Document) -> Document:
        """Build, sign and queue a document; it is durable when this returns."""
        # Built, sealed and signed in one worker thread; kept by the outbox's group commit.
        doc, record = await asyncio.to_thread(lambda: self.publisher.signed(self.document(draft)))
        await self.publisher.publish_record(doc, record)
        return doc

    async def queue_event(self, record: bytes) -> Document:
        """A record the agency's system signed itself: checked as the gateway will, then
        queued as it is."""
        verdict = await asyncio.to_thread(self.events.verify, record, now_ms())
        if isinstance(verdict, Rejected):
            raise DocbusError(verdict.reason, verdict.message)
        doc = verdict.payload
        if not isinstance(doc, Document):
            raise DocbusError(Reason.POLICY, "only documents are queued here")
        if doc.sender != self.agency:
            raise DocbusError(
                Reason.SENDER_MISMATCH, f"the document is from {doc.sender}, not {self.agency}"
            )
        await self.publisher.publish_record(doc, record)
        return doc

    def folder(self, sender: str, document_id: str, revision: int) -> Path:
        return self.inbox.folder / path_segment(sender) / path_segment(document_id) / str(revision)

    async def feedback(
        self, sender: str, document_id: str, revision: int, code: StatusCode, message: str | None
    ) -> None:
        """The agency's signed feedback about a received document (its exact record); the
        answer to a withdrawal request (CHANGE_ACCEPTED or CHANGE_REFUSED) only once the
        sender asked."""
        answers = code in (StatusCode.CHANGE_ACCEPTED, StatusCode.CHANGE_REFUSED)
        if code not in FEEDBACK and code is not StatusCode.REJECTED and not answers:
            raise DocbusError(Reason.MALFORMED, f"{code.value} is not an agency's feedback")
        event = self.folder(sender, document_id, revision) / "event.avro"
        if not event.is_file():
            raise FileNotFoundError(f"{document_id} revision {revision} is not in the inbox")
        if answers and not self.requests(sender, document_id, revision):
            raise NothingAsked(f"{sender} has not asked to withdraw {document_id}")
        record = await asyncio.to_thread(event.read_bytes)
        # The status names what the kept record says, whatever the URL spelled.
        received = self.inbox.verifier.codec.claims(record)
        if not isinstance(received, Document):
            raise DocbusError(Reason.MALFORMED, "the kept record is not a document")
        output = self.inbox.status(
            received,
            code,
            message,
            event_digest(record),
            Reason.POLICY.value if code is StatusCode.REJECTED else None,
        )
        await send_once(self.settings, output)
        self.received.answer(sender, document_id, revision, code.value)

    # The sender's requests about what this node received (edXML 13), as an Inbound.

    def wants(self, status: Status) -> bool:
        """A withdrawal request that names a document this inbox holds from its sender."""
        return (
            status.code is StatusCode.WITHDRAW_REQUESTED
            and self.received.get(status.by, status.document_id, status.revision) is not None
        )

    def take(self, verdict: Verified, record: bytes) -> None:
        """Keep a verified withdrawal request beside the document it names, if it is the
        sender's (its AGENCY seal) and names the exact record kept; ignore it otherwise."""
        status = verdict.payload
        assert isinstance(status, Status)
        folder = self.folder(status.by, status.document_id, status.revision)
        event = folder / "event.avro"
        sealed = any(s.role is Role.AGENCY and s.agency == status.by for s in verdict.signers)
        if (
            not sealed
            or not event.is_file()
            or status.event_digest != event_digest(event.read_bytes())
        ):
            log.warning(
                "withdrawal request ignored: not the sender's, or not for the bytes kept",
                document_id=status.document_id,
                by=status.by,
            )
            return
        kept = self.requests(status.by, status.document_id, status.revision)
        asked = {"code": status.code.value, "at": status.at.isoformat(), "message": status.message}
        if asked not in kept:
            # Whole or not at all: a torn file would spoil every later read of it.
            write_atomically(folder / REQUESTS, json.dumps([*kept, asked]).encode())
            log.info("withdrawal requested", document_id=status.document_id, by=status.by)

    def requests(self, sender: str, document_id: str, revision: int) -> list[dict[str, Any]]:
        """The sender's requests about a received document, oldest first."""
        path = self.folder(sender, document_id, revision) / REQUESTS
        kept: list[dict[str, Any]] = json.loads(path.read_text("utf-8")) if path.is_file() else []
        return kept

    async def request_withdrawal(
        self, document_id: str, revision: int, message: str | None
    ) -> None:
        """Ask the recipients to withdraw a document this node sent (edXML 13): a status
        signed with the agency's seal, for the exact record sent."""
        sent = self.outbox.get(document_id, revision)
        if sent is None:
            raise FileNotFoundError(f"{document_id} revision {revision} was not sent from here")
        status = Status(
            document_id,
            StatusCode.WITHDRAW_REQUESTED,
            self.agency,
            now_ms(),
            revision,
            message=message,
            event_digest=event_digest(sent.record),
        )
        # One record for each party the document went to, keyed for its node (DESIGN §8).
        doc = self.inbox.verifier.codec.claims(sent.record)
        parties = (*doc.recipients, *doc.cc) if isinstance(doc, Document) else sent.recipients
        topics, seal = self.settings.topics, self.keys.agency
        outputs = [status_output(status, seal, topics, party) for party in dict.fromkeys(parties)]
        await send_outputs(self.settings, outputs)
        self.outbox.own(status)


#: Beside a received document: what its sender asked about it since.
REQUESTS = "requests.json"


class NothingAsked(Exception):
    """An answer to a request that was never made (CHANGE_ACCEPTED with nothing asked)."""


def api_token(token_file: Path | None, data_dir: Path) -> str:
    """The API's bearer token: the file's, else the one in ``data_dir/token`` (made once,
    readable by its owner only). A token under 16 characters is refused: an empty file
    must never mean that no token is needed."""
    path = token_file or data_dir / "token"
    if token_file is None and not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / ".token.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    token = path.read_text("utf-8").strip()
    if len(token) < 16:
        raise Misconfigured(f"the token in {path} is shorter than 16 characters")
    return token
