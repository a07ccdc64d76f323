"""What the archive API answers (DESIGN §12), as pydantic models: the OpenAPI document is
made from them."""

from __future__ import annotations

from pydantic import BaseModel


class Item(BaseModel):
    sender: str
    document_id: str
    revision: int
    subject: str
    recipients: list[str]
    confidentiality: str
    received_at: str
    log_index: int


class Page(BaseModel):
    items: list[Item]
    next: int | None


class RevisionOut(BaseModel):
    revision: int
    action: str
    sender: str
    state: str
    by: int | None
    received_at: str
    log_index: int


class HistoryOut(BaseModel):
    """A document's revisions, oldest first; ``current`` is the one in force (None: revoked)."""

    sender: str
    document_id: str
    current: int | None
    revoked: bool
    revisions: list[RevisionOut]
