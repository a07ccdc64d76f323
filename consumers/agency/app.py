"""The agency node's HTTP API (DESIGN §11): FastAPI, problem+json errors, a bearer token."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import make_asgi_app
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bus.kafka.metrics import OUTBOX_OLDEST, OUTBOX_PENDING
from bus.registry import vietnam_date
from bus.store.lifecycle import State
from bus.wire.codec import default_codec
from bus.wire.limits import (
    MAX_ATTACHMENTS,
    MAX_BLOB_BYTES,
    MAX_NAME,
    MAX_PARTIES,
    MAX_RECORD_BYTES,
    MAX_REVISION,
    MAX_TEXT,
)
from bus.wire.model import (
    Attachment,
    Confidentiality,
    Document,
    Priority,
    Status,
    StatusCode,
    attachment,
    blob_location,
    media_type_of,
    now_ms,
)
from consumers.agency.node import AgencyNode, NothingAsked
from consumers.agency.problems import Problem, install, problem_response, problem_responses
from consumers.edxml import document_to_edxml
from consumers.inbox import revision_states

EVENT_TYPE = "application/vnd.docbus.event+avro"
JSON = "application/json"
MULTIPART = "multipart/form-data"
#: The largest request body: a document with its inline attachments in base64.
MAX_BODY = MAX_RECORD_BYTES * 2
_BEARER = HTTPBearer(auto_error=False)
FEEDBACK_CODES = (
    "RECEIVED",
    "ACCEPTED",
    "ASSIGNED",
    "PROCESSING",
    "COMPLETED",
    "REJECTED",
    "CHANGE_ACCEPTED",  # the answers to a sender's withdrawal request (edXML 15, 16)
    "CHANGE_REFUSED",
)


class AttachmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=MAX_NAME)
    media_type: str = Field("application/octet-stream", max_length=200)
    content_base64: str


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipients: list[Annotated[str, Field(max_length=100)]] = Field(
        min_length=1, max_length=MAX_PARTIES
    )
    cc: list[Annotated[str, Field(max_length=100)]] = Field([], max_length=MAX_PARTIES)
    subject: str = Field(min_length=1, max_length=MAX_TEXT)
    code_number: str | None = Field(None, max_length=200)
    document_type: str | None = Field(None, max_length=200)
    priority: Priority = Priority.NORMAL
    confidentiality: Confidentiality = Confidentiality.NONE
    due_date: date | None = None
    response_for: str | None = Field(None, max_length=MAX_NAME)
    signer_name: str | None = Field(None, max_length=200)
    attachments: list[AttachmentIn] = Field([], max_length=MAX_ATTACHMENTS)


class Queued(BaseModel):
    document_id: str
    revision: int
    state: str


class StatusOut(BaseModel):
    code: str
    by: str
    at: str
    reason: str | None = None
    message: str | None = None


class DocumentState(BaseModel):
    document_id: str
    revision: int
    state: str
    reason: str | None = None
    message: str | None = None
    sent: int
    statuses: list[StatusOut]
    receipt: dict[str, Any] | None = None


class InboxItem(BaseModel):
    sender: str
    document_id: str
    revision: int
    subject: str
    received_at: str
    verified: dict[str, Any]
    #: current, superseded (by a later UPDATE or REPLACE), withdrawn (by a REVOKE) or
    #: revocation (the REVOKE itself), among the revisions this inbox holds.
    state: str


class InboxPage(BaseModel):
    items: list[InboxItem]
    next: int | None


class OverdueItem(BaseModel):
    sender: str
    document_id: str
    revision: int
    subject: str
    due_date: str


class OverduePage(BaseModel):
    items: list[OverdueItem]


class WithdrawIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revision: int = Field(0, ge=0, le=MAX_REVISION)
    message: str | None = Field(None, max_length=MAX_TEXT)


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern="^(" + "|".join(FEEDBACK_CODES) + ")$")
    message: str | None = Field(None, max_length=MAX_TEXT)


def create_app(node: AgencyNode, token: str) -> FastAPI:
    """The API of ``node``; every route but health and the OpenAPI document needs ``token``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    app = FastAPI(
        title="docbus agency node",
        version="1",
        summary="Send, follow and receive signed documents on the bus over HTTP.",
        lifespan=lifespan,
        responses=problem_responses(400, 401, 404, 409, 413, 415, 422, 503),
    )
    install(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, limit=MAX_BODY, multipart_limit=MAX_BLOB_BYTES)

    def authorised(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Problem(401, "a valid bearer token is required")

    auth = [Depends(authorised)]

    @app.post(
        "/v1/documents",
        status_code=202,
        dependencies=auth,
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
    async def post_document(request: Request) -> Queued:
        if _media_type(request) == MULTIPART:
            draft, files = await _multipart(request, node)
        else:
            draft, files = _json_draft(await request.body()), []
        parts = []
        for a in draft.attachments:
            try:
                content = base64.b64decode(a.content_base64, validate=True)
            except ValueError:  # binascii.Error, or text that is not ASCII
                raise Problem(400, f"attachment {a.name!r}: not base64", "malformed") from None
            parts.append(attachment(a.name, content, a.media_type))
        doc = await node.queue(
            Document(
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
        )
        return Queued(document_id=doc.document_id, revision=doc.revision, state="PENDING")

    @app.post(
        "/v1/events",
        status_code=202,
        dependencies=auth,
        response_model=Queued,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {EVENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def post_event(request: Request) -> Queued:
        if request.headers.get("content-type", "").split(";")[0].strip() != EVENT_TYPE:
            raise Problem(415, f"send the signed record as {EVENT_TYPE}")
        record = await request.body()
        doc = await node.queue_event(record)
        return Queued(document_id=doc.document_id, revision=doc.revision, state="PENDING")

    @app.post("/v1/documents/{document_id:path}/withdraw", status_code=202, dependencies=auth)
    async def withdraw(document_id: str, asked: WithdrawIn) -> dict[str, Any]:
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

    @app.get("/v1/documents/{document_id:path}", dependencies=auth, response_model=DocumentState)
    async def get_document(
        document_id: str, revision: Annotated[int, Query(ge=0, le=MAX_REVISION)] = 0
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

    @app.get("/v1/inbox", dependencies=auth, response_model=InboxPage)
    async def inbox(
        after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> InboxPage:
        found = node.received.after(after, limit)
        return InboxPage(
            items=[
                InboxItem(
                    sender=r.sender,
                    document_id=r.document_id,
                    revision=r.revision,
                    subject=r.subject,
                    received_at=r.received_at.isoformat(),
                    verified=r.verification,
                    state=_state(node, r.sender, r.document_id, r.revision)[0],
                )
                for r in found
            ],
            next=found[-1].seq if len(found) == limit else None,
        )

    @app.get("/v1/inbox/overdue", dependencies=auth, response_model=OverduePage)
    async def overdue(
        on: date | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> OverduePage:
        """Received documents due before ``on`` (default: today in Vietnam) that this agency
        has not yet COMPLETED or REJECTED, the most overdue first."""
        found = node.received.overdue(on or vietnam_date(now_ms()), limit)
        return OverduePage(
            items=[
                OverdueItem(
                    sender=r.sender,
                    document_id=r.document_id,
                    revision=r.revision,
                    subject=r.subject,
                    due_date=r.due_date.isoformat() if r.due_date else "",
                )
                for r in found
            ]
        )

    base = "/v1/inbox/{sender}/{document_id:path}/{revision:int}"

    @app.get(
        base + "/attachments/{n:int}",
        dependencies=auth,
        response_class=Response,
        responses={200: {"content": {"*/*": {}}, "description": "the attachment's bytes"}},
    )
    async def attachment_bytes(sender: str, document_id: str, revision: int, n: int) -> Response:
        meta = _meta(node, sender, document_id, revision)
        files = meta.get("files", [])
        if not 0 <= n < len(files):
            raise Problem(404, f"no attachment {n}")
        path = node.folder(sender, document_id, revision) / "attachments" / files[n]
        if not path.is_file():
            raise Problem(404, f"attachment {n} is not kept here (sealed and not opened?)")
        # The sender chose the media type: never let a browser render it as this origin's.
        return FileResponse(
            path,
            media_type=meta["media_types"][n],
            headers={"X-Content-Type-Options": "nosniff"},
            content_disposition_type="attachment",
            filename=files[n],
        )

    @app.get(
        base + "/event",
        dependencies=auth,
        response_class=Response,
        responses={200: {"content": {EVENT_TYPE: {}}, "description": "the signed record"}},
    )
    async def event(sender: str, document_id: str, revision: int) -> Response:
        _meta(node, sender, document_id, revision)
        record = (node.folder(sender, document_id, revision) / "event.avro").read_bytes()
        return Response(record, media_type=EVENT_TYPE)

    @app.get(
        base + "/edxml",
        dependencies=auth,
        response_class=Response,
        responses={200: {"content": {"application/xml": {}}, "description": "edXML"}},
    )
    async def edxml(sender: str, document_id: str, revision: int) -> Response:
        _meta(node, sender, document_id, revision)
        record = (node.folder(sender, document_id, revision) / "event.avro").read_bytes()
        codec = default_codec()
        doc = codec.decode_document(codec.decode_event(record).payload)
        opened, _ = node.inbox.open(doc)
        return Response(document_to_edxml(opened), media_type="application/xml")

    @app.post(base + "/status", status_code=202, dependencies=auth)
    async def status(
        sender: str, document_id: str, revision: int, feedback: FeedbackIn
    ) -> dict[str, str]:
        _meta(node, sender, document_id, revision)
        try:
            await node.feedback(
                sender, document_id, revision, StatusCode(feedback.code), feedback.message
            )
        except NothingAsked as exc:
            raise Problem(409, str(exc)) from None
        return {"document_id": document_id, "code": feedback.code}

    @app.get(base, dependencies=auth)
    async def received(sender: str, document_id: str, revision: int) -> dict[str, Any]:
        meta = _meta(node, sender, document_id, revision)
        state, by = _state(node, sender, document_id, revision)
        requests = node.requests(sender, document_id, revision)
        return {**meta, "state": state, "superseded_by": by, "requests": requests}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Prometheus, like health, needs no token (DESIGN §10): the outbox's gauges with the
    # runtime's counters.
    app.mount("/metrics", make_asgi_app())
    OUTBOX_PENDING.set_function(lambda: node.outbox.pending_summary()[0])
    OUTBOX_OLDEST.set_function(lambda: _age(node.outbox.pending_summary()[1]))

    @app.get("/readyz", responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        ready = node.ready
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    return app


class BodyLimit:
    """The edge of every request: a body of another media type is refused (415), and a body
    over ``limit`` bytes (413) as soon as that many arrived, with or without a
    Content-Length, so a chunked body is never buffered past the limit. Plain ASGI: no
    per-request task or stream, unlike Starlette's BaseHTTPMiddleware."""

    def __init__(self, app: ASGIApp, limit: int, multipart_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.multipart_limit = multipart_limit  # files stream to disk, not to memory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        kind = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        limit = self.multipart_limit if kind == MULTIPART else self.limit
        length = headers.get(b"content-length", b"0").decode("latin-1")
        if not length.isdigit() or int(length) > limit:
            too_large = problem_response(413, f"the body is over {limit} bytes", "too_large")
            await too_large(scope, receive, send)
            return
        if scope["method"] == "POST" and kind not in (JSON, MULTIPART, EVENT_TYPE):
            wrong = problem_response(
                415, f"send {JSON} or {MULTIPART} (or {EVENT_TYPE} to /v1/events)"
            )
            await wrong(scope, receive, send)
            return
        seen = 0
        answered = False

        async def limited() -> Message:
            nonlocal seen, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    answered = True  # the app sees a client gone; its own answer is dropped
                    too_large = problem_response(
                        413, f"the body is over {limit} bytes", "too_large"
                    )
                    await too_large(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def unless_answered(message: Message) -> None:
            if not answered:
                await send(message)

        try:
            await self.app(scope, limited, unless_answered)
        except Exception:
            if not answered:
                raise


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the schemas of the bodies /v1/documents reads by hand."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        _, defs = models_json_schema(
            [(DocumentIn, "validation")], ref_template="#/components/schemas/{model}"
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        app.openapi_schema = schema
    return app.openapi_schema


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _json_draft(body: bytes | str) -> DocumentIn:
    try:
        return DocumentIn.model_validate_json(body)
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


def _meta(node: AgencyNode, sender: str, document_id: str, revision: int) -> dict[str, Any]:
    path = node.folder(sender, document_id, revision) / "document.json"
    if not path.is_file() or not (path.parent / "event.avro").is_file():
        raise Problem(404, f"{document_id} revision {revision} from {sender} is not in the inbox")
    meta: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return meta


def _state(
    node: AgencyNode, sender: str, document_id: str, revision: int
) -> tuple[str, int | None]:
    """A received revision's state among those the inbox holds, and what superseded it."""
    state, by = revision_states(node.inbox.folder, sender, document_id).get(
        revision, (State.CURRENT, None)
    )
    return state.value, by


def _age(since: datetime | None) -> float:
    return (datetime.now(UTC) - since).total_seconds() if since else 0.0


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
