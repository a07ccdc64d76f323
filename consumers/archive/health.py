"""Health and readiness of the archive API: open to all (DESIGN §10)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from consumers.archive.deps import ArchiveDep

router = APIRouter()


@router.get("/readyz", responses={503: {"description": "the database does not answer"}})
def readyz(archive: ArchiveDep) -> JSONResponse:
    try:
        archive.log_size()
    except Exception:  # any failure to answer is a database that is not usable now
        return JSONResponse({"ready": False}, status_code=503)
    return JSONResponse({"ready": True})


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
