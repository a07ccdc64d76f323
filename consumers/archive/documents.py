"""``/v1/archive/documents``: search, each document, its history, attachments and evidence
bundle (DESIGN §12). Handlers are plain functions: FastAPI runs them in its thread pool, so
a database query never holds up the event loop."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from bus.audit.evidence import export_evidence
from bus.registry import VIETNAM
from bus.store.archive import Archive
from bus.store.documents import Entry, Search
from bus.store.lifecycle import history, lineage
from bus.wire.codec import default_codec
from bus.wire.errors import DocbusError
from bus.wire.limits import MAX_REVISION
from bus.wire.model import Document
from consumers.agency.problems import Problem
from consumers.archive.deps import ArchiveDep
from consumers.archive.models import HistoryOut, Item, Page, RevisionOut

EVIDENCE_TYPE = "application/vnd.docbus.evidence+json"
_MEDIA_TYPE = re.compile(r"[\w!#$&^.+-]{1,64}/[\w!#$&^.+-]{1,64}")

router = APIRouter()


@router.get("/v1/archive/documents", response_model=Page)
def search(
    archive: ArchiveDep,
    sender: str | None = None,
    recipient: str | None = None,
    from_: Annotated[date | None, Query(alias="from")] = None,
    to: date | None = None,
    code_number: str | None = None,
    q: Annotated[str | None, Query(max_length=500)] = None,
    cursor: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page:
    """Documents by sender, recipient, receipt date (Vietnam time, ``to`` inclusive),
    code number and subject words, with or without diacritics ("ke hoach" finds "Kế
    hoạch"), oldest first; ``next`` is the cursor of the following page."""
    found, after = archive.search(
        Search(
            sender=sender,
            recipient=recipient,
            received_from=_start(from_),
            received_to=_start(to, days=1),
            code_number=code_number,
            text=q,
            cursor=cursor,
            limit=limit,
        )
    )
    return Page(items=[_item(e) for e in found], next=after)


BASE = "/v1/archive/documents/{sender}/{document_id:path}/{revision:int}"


@router.get(
    BASE + "/evidence",
    response_class=Response,
    responses={200: {"content": {EVIDENCE_TYPE: {}}, "description": "evidence bundle"}},
)
def evidence(sender: str, document_id: str, revision: int, archive: ArchiveDep) -> Response:
    _revision(revision)
    try:
        bundle = export_evidence(archive, document_id, revision, sender)
    except DocbusError as exc:
        raise Problem(404, exc.message) from None
    return Response(bundle.to_bytes(), media_type=EVIDENCE_TYPE)


@router.get("/v1/archive/documents/{sender}/{document_id:path}/history", response_model=HistoryOut)
def revisions(sender: str, document_id: str, archive: ArchiveDep) -> HistoryOut:
    """Every revision of the document, which one is in force, and whether it was
    revoked: UPDATE and REPLACE supersede what came before, REVOKE withdraws."""
    found = history(lineage(archive.find(document_id), sender))
    if found is None or sender not in {r.sender for r in found.revisions}:
        raise Problem(404, f"{document_id} from {sender} is not archived")
    return HistoryOut(
        sender=sender,
        document_id=found.document_id,
        current=found.current,
        revoked=found.revoked,
        revisions=[
            RevisionOut(
                revision=r.revision,
                action=r.action.value,
                sender=r.sender,
                state=r.state.value,
                by=r.by,
                received_at=r.received_at.isoformat(),
                log_index=r.log_index,
            )
            for r in found.revisions
        ],
    )


@router.get(
    BASE + "/attachments/{n:int}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "bytes"}},
)
def attachment(
    sender: str, document_id: str, revision: int, n: int, archive: ArchiveDep
) -> Response:
    """An attachment's bytes as archived (a sealed document's stay sealed: ciphertext),
    checked against the signed hash as they are read."""
    doc = _document(archive, sender, document_id, revision)[1]
    if not 0 <= n < len(doc.attachments):
        raise Problem(404, f"no attachment {n}")
    a = doc.attachments[n]
    # The sender chose the name and type: a download, never rendered as this origin's.
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(a.name, safe='')}",
    }
    # The sender wrote the media type: only a plain type/subtype goes into a header.
    plain = doc.sealed is None and _MEDIA_TYPE.fullmatch(a.media_type)
    media = a.media_type if plain else "application/octet-stream"
    if a.content is not None:
        return Response(a.content, media_type=media, headers=headers)
    if not archive.blobs.has(a.sha256, a.size):
        raise Problem(404, f"attachment {n} is not in the archive's blob store")
    return StreamingResponse(
        iterate_in_threadpool(archive.blobs.chunks(a.sha256, a.size)),
        media_type=media,
        headers={**headers, "Content-Length": str(a.size)},
    )


@router.get(BASE)
def document(sender: str, document_id: str, revision: int, archive: ArchiveDep) -> dict[str, Any]:
    """Every field of the archived document (a sealed one's stay sealed), where it sits
    in the log, and when it was received."""
    entry, doc = _document(archive, sender, document_id, revision)
    life = history(lineage(archive.find(document_id), sender))
    states = {r.revision: r.state.value for r in life.revisions} if life else {}
    avro = doc.to_avro()
    for a in avro["attachments"]:
        a.pop("content")  # the bytes are not metadata
    return {
        **{k: (v.isoformat() if isinstance(v, date) else v) for k, v in avro.items()},
        "issued_at": doc.issued_at.isoformat(),
        "sealed": doc.sealed is not None,
        "received_at": entry.received_at.isoformat(),
        "log_index": entry.log_index,
        "state": states.get(revision, ""),
        "statuses": _receipts(entry),
        "current_revision": life.current if life else None,
    }


def _document(
    archive: Archive, sender: str, document_id: str, revision: int
) -> tuple[Entry, Document]:
    """The archived entry of one identity (never a conflict row) and what it carries."""
    _revision(revision)
    entries = [
        e
        for e in archive.find(document_id)
        if e.sender == sender and e.revision == revision and not e.conflict
    ]
    if not entries:
        raise Problem(404, f"{document_id} revision {revision} from {sender} is not archived")
    codec = default_codec()
    return entries[0], codec.decode_document(codec.decode_event(entries[0].event).payload)


def _receipts(entry: Entry) -> list[dict[str, Any]]:
    """The statuses the archive holds for an entry: the gateway's signed receipt (verified
    when it was archived, and again by every verify-archive)."""
    if not entry.receipt:
        return []
    codec = default_codec()
    status = codec.decode_status(codec.decode_event(entry.receipt).payload)
    return [{"code": status.code.value, "by": status.by, "at": status.at.isoformat()}]


def _revision(revision: int) -> None:
    if revision > MAX_REVISION:
        raise Problem(404, "no such revision")


def _start(day: date | None, days: int = 0) -> datetime | None:
    """The first instant of ``day`` (plus ``days``) in Vietnam's time zone."""
    if day is None:
        return None
    return datetime.combine(day + timedelta(days=days), time(), VIETNAM)


def _item(e: Entry) -> Item:
    return Item(
        sender=e.sender,
        document_id=e.document_id,
        revision=e.revision,
        subject=e.subject,
        recipients=list(e.recipients),
        confidentiality=e.confidentiality,
        received_at=e.received_at.isoformat(),
        log_index=e.log_index,
    )
