"""``/v1/documents`` and ``/v1/events``: what the node's agency sends, and what became of it
(DESIGN §11)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from bus.wire.errors import DocbusError, Unavailable
from bus.wire.limits import MAX_ATTACHMENTS, MAX_REVISION
from bus.wire.model import (
    Attachment,
    Confidentiality,
    Document,
    Status,
    StatusCode,
    attachment,
    blob_location,
    media_type_of,
    now_ms,
)
from consumers.agency.deps import AUTH, Node
from consumers.agency.models import (
    EVENT_TYPE,
    JSON,
    MULTIPART,
    BatchIn,
    BatchItem,
    BatchOut,
    DocumentIn,
    DocumentState,
    Queued,
    StatusOut,
    WithdrawIn,
)
from consumers.agency.node import AgencyNode
from consumers.agency.problems import Problem, ProblemOut, problem_body

router = APIRouter(dependencies=AUTH)
log = structlog.get_logger("agency")


@router.post(
    "/v1/documents",
    status_code=202,
    response_model=Queued,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": {"$ref": "#/components/schemas/DocumentIn"}},
                MULTIPART: {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "metadata": {"$ref": "#/components/schemas/DocumentIn"},
                            "file": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            },
                        },
                        "required": ["metadata"],
                    },
                    "encoding": {"metadata": {"contentType": JSON}},
                },
            },
        }
    },
)
async def post_document(request: Request, node: Node) -> Queued:
    if _media_type(request) == MULTIPART:
        draft, files = await _multipart(request, node)
    else:
        draft, files = _json_draft(await request.body()), []
    doc = await node.queue(_document(node, draft, files))
    return Queued(document_id=doc.document_id, revision=doc.revision, state="PENDING")


@router.post("/v1/documents:batch", response_model=BatchOut)
async def post_documents(batch: BatchIn, node: Node) -> BatchOut:
    """Up to 100 documents in one request (for systems that send in bulk), each checked,
    signed and queued on its own, answered in order: 202 and what was queued, or the
    problem that document alone has. Each queued one is durable when this answers."""
    return BatchOut(items=await asyncio.gather(*(_queued(node, raw) for raw in batch.documents)))


async def _queued(node: AgencyNode, raw: dict[str, Any]) -> BatchItem:
    try:
        doc = await node.queue(_document(node, _draft(lambda: DocumentIn.model_validate(raw)), []))
    except DocbusError as exc:
        problem = Problem.of(exc)
    except Problem as exc:
        problem = exc
    except Unavailable as exc:  # this one is not queued; the others are answered as they are
        problem = Problem(503, str(exc))
    except Exception as exc:
        log.error("batch document failed", error=repr(exc))
        problem = Problem(500, "the node could not queue this document")
    else:
        return BatchItem(
            status=202,
            document=Queued(document_id=doc.document_id, revision=doc.revision, state="PENDING"),
        )
    body = problem_body(problem.status, problem.detail, problem.reason)
    return BatchItem(status=problem.status, problem=ProblemOut(**body))


def _document(node: AgencyNode, draft: DocumentIn, files: list[Attachment]) -> Document:
    """The document a draft asks for, from this node's agency, its inline attachments
    decoded."""
    parts = []
    for a in draft.attachments:
        try:
            content = base64.b64decode(a.content_base64, validate=True)
        except ValueError:  # binascii.Error, or text that is not ASCII
            raise Problem(400, f"attachment {a.name!r}: not base64", "malformed") from None
        parts.append(attachment(a.name, content, a.media_type))
    return Document(
        document_id="",
        sender=node.agency,
        recipients=tuple(draft.recipients),
        cc=tuple(draft.cc),
        subject=draft.subject,
        issued_at=now_ms(),
        code_number=draft.code_number,
        document_type=draft.document_type,
        priority=draft.priority,
        confidentiality=draft.confidentiality,
        due_date=draft.due_date,
        response_for=draft.response_for,
        signer_name=draft.signer_name,
        attachments=(*parts, *files),
    )


@router.post(
    "/v1/events",
    status_code=202,
    response_model=Queued,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {EVENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def post_event(request: Request, node: Node) -> Queued:
    if request.headers.get("content-type", "").split(";")[0].strip() != EVENT_TYPE:
        raise Problem(415, f"send the signed record as {EVENT_TYPE}")
    record = await request.body()
    doc = await node.queue_event(record)
    return Queued(document_id=doc.document_id, revision=doc.revision, state="PENDING")


@router.post("/v1/documents/{document_id:path}/withdraw", status_code=202)
async def withdraw(document_id: str, asked: WithdrawIn, node: Node) -> dict[str, Any]:
    """Ask the recipients to withdraw a document this node sent (edXML 13,
    WITHDRAW_REQUESTED); their answers (CHANGE_ACCEPTED, CHANGE_REFUSED) appear among
    the document's statuses."""
    try:
        await node.request_withdrawal(document_id, asked.revision, asked.message)
    except FileNotFoundError as exc:
        raise Problem(404, str(exc)) from None
    return {
        "document_id": document_id,
        "revision": asked.revision,
        "code": "WITHDRAW_REQUESTED",
    }


@router.get("/v1/documents/{document_id:path}", response_model=DocumentState)
async def get_document(
    document_id: str, node: Node, revision: Annotated[int, Query(ge=0, le=MAX_REVISION)] = 0
) -> DocumentState:
    entry = node.outbox.get(document_id, revision)
    if entry is None:
        raise Problem(404, f"{document_id} revision {revision} was not sent by this node")
    statuses = node.outbox.statuses(document_id, revision)
    return DocumentState(
        document_id=entry.document_id,
        revision=entry.revision,
        state=entry.state.value,
        reason=entry.reason,
        message=entry.message,
        sent=entry.attempts,
        statuses=[
            StatusOut(
                code=s.code.value,
                by=s.by,
                at=s.at.isoformat(),
                reason=s.reason,
                message=s.message,
            )
            for s in statuses
        ],
        receipt=_receipt(statuses),
    )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _json_draft(body: bytes | str) -> DocumentIn:
    return _draft(lambda: DocumentIn.model_validate_json(body))


def _draft(validate: Callable[[], DocumentIn]) -> DocumentIn:
    try:
        return validate()
    except ValidationError as exc:
        where = "; ".join(
            f"{'/'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise Problem(400, where or "malformed document", "malformed") from None


async def _multipart(request: Request, node: AgencyNode) -> tuple[DocumentIn, list[Attachment]]:
    """A ``metadata`` JSON part and file parts. Python-multipart spools each file to disk
    past 1 MiB; files over the blob threshold are streamed into the blob store from there
    (unless the document is sealed: those are sealed in one piece)."""
    try:
        form = await request.form(max_files=MAX_ATTACHMENTS, max_fields=10)
    except (HTTPException, ValueError) as exc:
        raise Problem(400, f"not a readable multipart body: {exc}", "malformed") from None
    metadata = form.get("metadata")
    if metadata is None:
        raise Problem(400, "the metadata part is missing", "malformed")
    draft = _json_draft(metadata if isinstance(metadata, str) else await metadata.read())
    sealed = draft.confidentiality not in (Confidentiality.NONE, Confidentiality.UNKNOWN)
    files = []
    for upload in form.getlist("file"):
        if isinstance(upload, str):
            raise Problem(400, "a file part must be a file", "malformed")
        name = upload.filename or "attachment"
        kind = upload.content_type or media_type_of(name)
        if sealed or (upload.size or 0) <= node.blob_threshold:
            files.append(attachment(name, await upload.read(), kind))
            continue
        digest, size = await asyncio.to_thread(node.blobs.put_stream, upload.file, name)
        files.append(Attachment(name, kind, size, digest, location=blob_location(digest)))
    return draft, files


def _receipt(statuses: list[Status]) -> dict[str, Any] | None:
    for s in statuses:
        if s.code is StatusCode.ARCHIVED and s.log is not None:
            return {
                "index": s.log.index,
                "tree_size": s.log.tree_size,
                "root_hash": base64.b64encode(s.log.root_hash).decode(),
                "inclusion_proof": [base64.b64encode(h).decode() for h in s.log.inclusion_proof],
                "checkpoint": s.log.checkpoint.decode(errors="replace"),
            }
    return None
