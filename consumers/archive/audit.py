"""``/audit``: the auditor's page (DESIGN §12)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from consumers.archive.deps import ArchiveDep
from consumers.audit_page import audit_html

router = APIRouter()


@router.get("/audit", response_class=HTMLResponse)
def audit_page(archive: ArchiveDep) -> HTMLResponse:
    """The auditor's page: the log's checkpoints with their witness cosignatures, the
    last verify-archive result, and the conflicts kept."""
    return HTMLResponse(audit_html(archive))
