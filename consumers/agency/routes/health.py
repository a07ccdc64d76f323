"""Health and readiness: open to all, no token (DESIGN §10)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from consumers.agency.deps import Node

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready"}})
async def readyz(node: Node) -> JSONResponse:
    ready = node.ready
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)
