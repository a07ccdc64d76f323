"""Building a new document for publication: ids, attachments with their hashes."""

from __future__ import annotations

import hashlib
import mimetypes
import uuid
from collections.abc import Sequence
from pathlib import Path

from bus.wire.model import Attachment, Confidentiality, Document, Priority, now_ms


def attachment(name: str, content: bytes, media_type: str | None = None) -> Attachment:
    """An inline attachment with its size and SHA-256."""
    guessed = media_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Attachment(
        name=name,
        media_type=guessed,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        content=content,
    )


def new_document(
    sender: str,
    recipients: Sequence[str],
    subject: str,
    files: Sequence[Path] = (),
    *,
    code_number: str | None = None,
    document_type: str | None = None,
    priority: Priority = Priority.NORMAL,
    signer_name: str | None = None,
    confidentiality: Confidentiality = Confidentiality.NONE,
) -> Document:
    """A NEW document born on the bus (a fresh UUID, issued now)."""
    if not recipients:
        raise ValueError("a document needs at least one recipient")
    return Document(
        document_id=str(uuid.uuid4()),
        sender=sender,
        recipients=tuple(recipients),
        subject=subject,
        issued_at=now_ms(),
        code_number=code_number,
        document_type=document_type,
        priority=priority,
        signer_name=signer_name,
        confidentiality=confidentiality,
        attachments=tuple(attachment(f.name, f.read_bytes()) for f in files),
    )
