"""Building a new document for publication: ids, attachments with their hashes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

from bus.store.blobs import BlobStore
from bus.wire.errors import Misconfigured
from bus.wire.limits import BLOB_THRESHOLD
from bus.wire.model import (
    Attachment,
    Confidentiality,
    Document,
    Priority,
    attachment,
    blob_location,
    media_type_of,
    now_ms,
)


def file_attachment(
    path: Path, blobs: BlobStore | None, threshold: int = BLOB_THRESHOLD
) -> Attachment:
    """A file as an attachment: inline, or streamed into ``blobs`` when it is over
    ``threshold`` (a file is then read once in chunks and never held in memory)."""
    if blobs is None or path.stat().st_size <= threshold:
        return attachment(path.name, path.read_bytes())
    digest, size = blobs.put_file(path)
    return Attachment(
        name=path.name,
        media_type=media_type_of(path.name),
        size=size,
        sha256=digest,
        location=blob_location(digest),
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
    blobs: BlobStore | None = None,
    threshold: int = BLOB_THRESHOLD,
) -> Document:
    """A NEW document born on the bus (a fresh UUID, issued now); files over the blob
    threshold go to ``blobs`` when one is given."""
    if not recipients:
        raise Misconfigured("a document needs at least one recipient")
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
        attachments=tuple(file_attachment(f, blobs, threshold) for f in files),
    )
