"""``/v1/inbox``: what the node's agency received, its attachments and signed record, and the
statuses it answers with (DESIGN §11)."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse

from bus.registry import vietnam_date
from bus.store.lifecycle import State
from bus.wire.codec import default_codec
from bus.wire.model import StatusCode, now_ms
from consumers.agency.deps import AUTH, Node
from consumers.agency.models import (
    EVENT_TYPE,
    FeedbackIn,
    InboxItem,
    InboxPage,
    OverdueItem,
    OverduePage,
)
from consumers.agency.node import AgencyNode, NothingAsked
from consumers.agency.problems import Problem
from consumers.edxml import document_to_edxml
from consumers.inbox import revision_states

router = APIRouter(dependencies=AUTH)


@router.get("/v1/inbox", response_model=InboxPage)
async def inbox(
    node: Node,
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


@router.get("/v1/inbox/overdue", response_model=OverduePage)
async def overdue(
    node: Node, on: date | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
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


BASE = "/v1/inbox/{sender}/{document_id:path}/{revision:int}"


@router.get(
    BASE + "/attachments/{n:int}",
    response_class=Response,
    responses={200: {"content": {"*/*": {}}, "description": "the attachment's bytes"}},
)
async def attachment_bytes(
    sender: str, document_id: str, revision: int, n: int, node: Node
) -> Response:
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


@router.get(
    BASE + "/event",
    response_class=Response,
    responses={200: {"content": {EVENT_TYPE: {}}, "description": "the signed record"}},
)
async def event(sender: str, document_id: str, revision: int, node: Node) -> Response:
    _meta(node, sender, document_id, revision)
    record = (node.folder(sender, document_id, revision) / "event.avro").read_bytes()
    return Response(record, media_type=EVENT_TYPE)


@router.get(
    BASE + "/edxml",
    response_class=Response,
    responses={200: {"content": {"application/xml": {}}, "description": "edXML"}},
)
async def edxml(sender: str, document_id: str, revision: int, node: Node) -> Response:
    _meta(node, sender, document_id, revision)
    record = (node.folder(sender, document_id, revision) / "event.avro").read_bytes()
    codec = default_codec()
    doc = codec.decode_document(codec.decode_event(record).payload)
    opened, _ = node.inbox.open(doc)
    return Response(document_to_edxml(opened), media_type="application/xml")


@router.post(BASE + "/status", status_code=202)
async def status(
    sender: str, document_id: str, revision: int, feedback: FeedbackIn, node: Node
) -> dict[str, str]:
    _meta(node, sender, document_id, revision)
    try:
        await node.feedback(
            sender, document_id, revision, StatusCode(feedback.code), feedback.message
        )
    except NothingAsked as exc:
        raise Problem(409, str(exc)) from None
    return {"document_id": document_id, "code": feedback.code}


@router.get(BASE)
async def received(sender: str, document_id: str, revision: int, node: Node) -> dict[str, Any]:
    meta = _meta(node, sender, document_id, revision)
    state, by = _state(node, sender, document_id, revision)
    requests = node.requests(sender, document_id, revision)
    return {**meta, "state": state, "superseded_by": by, "requests": requests}


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
