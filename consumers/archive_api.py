"""The archive API (DESIGN §12): search, documents and evidence bundles for the unified
document management system and auditors, one router per resource. Read-only by
construction: the archive is opened through a connection SQLite refuses every write on."""

from __future__ import annotations

import json
from typing import Any, cast

from fastapi import FastAPI
from prometheus_client import make_asgi_app

from bus.store.archive import Archive
from consumers.agency.problems import install, problem_responses
from consumers.archive import audit, documents, health
from consumers.archive.documents import EVIDENCE_TYPE

__all__ = ["EVIDENCE_TYPE", "create_archive_app", "openapi_document"]


def create_archive_app(archive: Archive) -> FastAPI:
    """The read-only API over ``archive``."""
    app = FastAPI(
        title="docbus archive",
        version="1",
        summary="Search the national archive; fetch documents and their evidence.",
        responses=problem_responses(400, 404, 422),
    )
    app.state.archive = archive
    install(app)
    for router in (documents.router, audit.router, health.router):
        app.include_router(router)
    app.mount("/metrics", make_asgi_app())
    return app


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document (committed as docs/openapi/archive.json):

    python -m consumers.archive_api > docs/openapi/archive.json
    """
    # Only the document is built: no handler runs, so no archive is needed behind it.
    return create_archive_app(cast(Archive, None)).openapi()


if __name__ == "__main__":
    print(json.dumps(openapi_document(), ensure_ascii=False, indent=2))
