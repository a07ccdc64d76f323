"""What the agency node's HTTP API reads and answers (DESIGN §11), as pydantic models: the
OpenAPI document is made from them."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from bus.wire.limits import MAX_ATTACHMENTS, MAX_NAME, MAX_PARTIES, MAX_REVISION, MAX_TEXT
from bus.wire.model import Confidentiality, Priority
from consumers.agency.problems import ProblemOut

EVENT_TYPE = "application/vnd.docbus.event+avro"
JSON = "application/json"
MULTIPART = "multipart/form-data"
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


#: The most documents one ``POST /v1/documents:batch`` takes (and the body limit holds).
MAX_BATCH = 100


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Each is a DocumentIn, checked on its own: one bad document fails alone.
    documents: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        json_schema_extra={"items": {"$ref": "#/components/schemas/DocumentIn"}},
    )


class BatchItem(BaseModel):
    """One document's answer: 202 and what was queued, or a problem's status and details."""

    status: int
    document: Queued | None = None
    problem: ProblemOut | None = None


class BatchOut(BaseModel):
    items: list[BatchItem]


class AgencyOut(BaseModel):
    """An agency as the national directory in force names it (DESIGN §13)."""

    code: str
    name: str | None
    unit: str
    jurisdiction: str | None
    in_force: bool
    successor: str | None
    encryption_certificate: str | None
    signing_certificates: list[str]


class AgencyPage(BaseModel):
    items: list[AgencyOut]
    next: str | None
    directory_version: int | None
