"""The envelope model: typed views of the Avro records in `schemas/`."""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

DOCUMENT_TYPE = "application/vnd.docbus.document+avro"
STATUS_TYPE = "application/vnd.docbus.status+avro"


class Role(StrEnum):
    """Who a signature speaks for."""

    UNKNOWN = "UNKNOWN"
    SIGNER = "SIGNER"
    AGENCY = "AGENCY"
    SERVICE = "SERVICE"


class Algorithm(StrEnum):
    """Signature algorithms the bus accepts (UNKNOWN is what a newer writer's symbol reads as)."""

    UNKNOWN = "UNKNOWN"
    ED25519 = "ED25519"
    ECDSA_P256_SHA256 = "ECDSA_P256_SHA256"
    RSA_PSS_SHA256 = "RSA_PSS_SHA256"
    ML_DSA_65 = "ML_DSA_65"


class Action(StrEnum):
    """edXML business types 0-3."""

    UNKNOWN = "UNKNOWN"
    NEW = "NEW"
    REVOKE = "REVOKE"
    UPDATE = "UPDATE"
    REPLACE = "REPLACE"


class Priority(StrEnum):
    NORMAL = "NORMAL"
    URGENT = "URGENT"
    VERY_URGENT = "VERY_URGENT"
    EXPRESS = "EXPRESS"


class Confidentiality(StrEnum):
    UNKNOWN = "UNKNOWN"
    NONE = "NONE"
    CONFIDENTIAL = "CONFIDENTIAL"
    SECRET = "SECRET"
    TOP_SECRET = "TOP_SECRET"


class SealSuite(StrEnum):
    UNKNOWN = "UNKNOWN"
    X25519_SHA256_AES256GCM = "X25519_SHA256_AES256GCM"
    MLKEM768X25519_SHA256_AES256GCM = "MLKEM768X25519_SHA256_AES256GCM"


class StatusCode(StrEnum):
    """The bus's own receipts and the edXML feedback codes."""

    UNKNOWN = "UNKNOWN"
    DELIVERED = "DELIVERED"
    ARCHIVED = "ARCHIVED"
    RECEIVED = "RECEIVED"
    REJECTED = "REJECTED"
    ACCEPTED = "ACCEPTED"
    ASSIGNED = "ASSIGNED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    WITHDRAW_REQUESTED = "WITHDRAW_REQUESTED"
    CHANGE_ACCEPTED = "CHANGE_ACCEPTED"
    CHANGE_REFUSED = "CHANGE_REFUSED"


def event_digest(record: bytes) -> bytes:
    """SHA-256 of the exact record bytes: what a status answers (Status.event_digest)."""
    return hashlib.sha256(record).digest()


def now_ms() -> datetime:
    """The current UTC time at the millisecond precision Avro timestamps keep."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _utc(value: datetime) -> datetime:
    # Avro timestamp-millis carries no zone: naive values are taken as UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Signature:
    role: Role
    alg: Algorithm
    key_id: str
    cert_chain: tuple[bytes, ...]
    sig: bytes

    def to_avro(self) -> dict[str, Any]:
        return {
            "role": self.role.value,
            "alg": self.alg.value,
            "key_id": self.key_id,
            "cert_chain": list(self.cert_chain),
            "sig": self.sig,
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Signature:
        return cls(
            role=Role(d["role"]),
            alg=Algorithm(d["alg"]),
            key_id=d["key_id"],
            cert_chain=tuple(d["cert_chain"]),
            sig=d["sig"],
        )


@dataclass(frozen=True)
class SignedEvent:
    """The record value on every docbus topic: signed payload bytes plus signatures."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_avro(self) -> dict[str, Any]:
        return {
            "payload_type": self.payload_type,
            "payload": self.payload,
            "signatures": [s.to_avro() for s in self.signatures],
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> SignedEvent:
        return cls(
            payload_type=d["payload_type"],
            payload=d["payload"],
            signatures=tuple(Signature.from_avro(s) for s in d["signatures"]),
        )


#: A blob-store attachment's ``location``: content-addressed, never a URL to fetch from.
BLOB_SCHEME = "sha256:"


def blob_location(sha256: str) -> str:
    return BLOB_SCHEME + sha256


@dataclass(frozen=True)
class Attachment:
    name: str
    media_type: str
    size: int
    sha256: str
    content: bytes | None = None
    location: str | None = None

    @property
    def in_blob_store(self) -> bool:
        return self.content is None and self.location is not None

    def to_avro(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "media_type": self.media_type,
            "size": self.size,
            "sha256": self.sha256,
            "content": self.content,
            "location": self.location,
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Attachment:
        return cls(
            name=d["name"],
            media_type=d["media_type"],
            size=d["size"],
            sha256=d["sha256"],
            content=d["content"],
            location=d["location"],
        )


@dataclass(frozen=True)
class SealedKey:
    agency: str
    key_id: str
    enc: bytes
    sealed_key: bytes


@dataclass(frozen=True)
class Sealing:
    suite: SealSuite
    subject: bytes
    keys: tuple[SealedKey, ...]

    def to_avro(self) -> dict[str, Any]:
        return {
            "suite": self.suite.value,
            "subject": self.subject,
            "keys": [
                {"agency": k.agency, "key_id": k.key_id, "enc": k.enc, "sealed_key": k.sealed_key}
                for k in self.keys
            ],
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Sealing:
        return cls(
            suite=SealSuite(d["suite"]),
            subject=d["subject"],
            keys=tuple(SealedKey(**k) for k in d["keys"]),
        )


@dataclass(frozen=True)
class Document:
    """An official document (the payload of a document event)."""

    document_id: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    issued_at: datetime
    revision: int = 0
    action: Action = Action.NEW
    cc: tuple[str, ...] = ()
    code_number: str | None = None
    document_type: str | None = None
    promulgated_at: date | None = None
    promulgation_place: str | None = None
    signer_name: str | None = None
    signer_title: str | None = None
    priority: Priority = Priority.NORMAL
    confidentiality: Confidentiality = Confidentiality.NONE
    due_date: date | None = None
    response_for: str | None = None
    attachments: tuple[Attachment, ...] = ()
    sealed: Sealing | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_avro(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "revision": self.revision,
            "action": self.action.value,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "cc": list(self.cc),
            "code_number": self.code_number,
            "document_type": self.document_type,
            "subject": self.subject,
            "promulgated_at": self.promulgated_at,
            "promulgation_place": self.promulgation_place,
            "signer_name": self.signer_name,
            "signer_title": self.signer_title,
            "priority": self.priority.value,
            "confidentiality": self.confidentiality.value,
            "due_date": self.due_date,
            "response_for": self.response_for,
            "issued_at": _utc(self.issued_at),
            "attachments": [a.to_avro() for a in self.attachments],
            "sealed": None if self.sealed is None else self.sealed.to_avro(),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Document:
        return cls(
            document_id=d["document_id"],
            revision=d["revision"],
            action=Action(d["action"]),
            sender=d["sender"],
            recipients=tuple(d["recipients"]),
            cc=tuple(d["cc"]),
            code_number=d["code_number"],
            document_type=d["document_type"],
            subject=d["subject"],
            promulgated_at=d["promulgated_at"],
            promulgation_place=d["promulgation_place"],
            signer_name=d["signer_name"],
            signer_title=d["signer_title"],
            priority=Priority(d["priority"]),
            confidentiality=Confidentiality(d["confidentiality"]),
            due_date=d["due_date"],
            response_for=d["response_for"],
            issued_at=_utc(d["issued_at"]),
            attachments=tuple(Attachment.from_avro(a) for a in d["attachments"]),
            sealed=None if d["sealed"] is None else Sealing.from_avro(d["sealed"]),
            extra=dict(d["extra"]),
        )


@dataclass(frozen=True)
class LogProof:
    index: int
    tree_size: int
    root_hash: bytes
    inclusion_proof: tuple[bytes, ...]
    checkpoint: bytes


@dataclass(frozen=True)
class Status:
    """A receipt or feedback about one document revision (the payload of a status event)."""

    document_id: str
    code: StatusCode
    by: str
    at: datetime
    revision: int = 0
    reason: str | None = None
    message: str | None = None
    rerouted: dict[str, str] = field(default_factory=dict)
    log: LogProof | None = None
    extra: dict[str, str] = field(default_factory=dict)
    event_digest: bytes | None = None

    def to_avro(self) -> dict[str, Any]:
        log = self.log
        return {
            "document_id": self.document_id,
            "revision": self.revision,
            "code": self.code.value,
            "reason": self.reason,
            "message": self.message,
            "by": self.by,
            "at": _utc(self.at),
            "extra": dict(self.extra),
            "rerouted": dict(self.rerouted),
            "event_digest": self.event_digest,
            "log": None
            if log is None
            else {
                "index": log.index,
                "tree_size": log.tree_size,
                "root_hash": log.root_hash,
                "inclusion_proof": list(log.inclusion_proof),
                "checkpoint": log.checkpoint,
            },
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Status:
        log = d["log"]
        return cls(
            document_id=d["document_id"],
            revision=d["revision"],
            code=StatusCode(d["code"]),
            reason=d["reason"],
            message=d["message"],
            by=d["by"],
            at=_utc(d["at"]),
            rerouted=dict(d["rerouted"]),
            extra=dict(d["extra"]),
            event_digest=d["event_digest"],
            log=None
            if log is None
            else LogProof(
                index=log["index"],
                tree_size=log["tree_size"],
                root_hash=log["root_hash"],
                inclusion_proof=tuple(log["inclusion_proof"]),
                checkpoint=log["checkpoint"],
            ),
        )


def media_type_of(name: str) -> str:
    """The media type a file name suggests (octet-stream when it suggests none)."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def attachment(name: str, content: bytes, media_type: str | None = None) -> Attachment:
    """An inline attachment with its size and SHA-256."""
    return Attachment(
        name=name,
        media_type=media_type or media_type_of(name),
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        content=content,
    )
