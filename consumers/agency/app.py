"""The agency node's HTTP API (DESIGN §11): FastAPI, one router per resource, problem+json
errors, a bearer token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import make_asgi_app
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bus.kafka.metrics import OUTBOX_OLDEST, OUTBOX_PENDING
from bus.wire.limits import MAX_BLOB_BYTES, MAX_RECORD_BYTES
from consumers.agency.models import EVENT_TYPE, JSON, MULTIPART, DocumentIn
from consumers.agency.node import AgencyNode
from consumers.agency.problems import install, problem_response, problem_responses
from consumers.agency.routes import agencies, documents, health, inbox

__all__ = ["EVENT_TYPE", "create_app"]

#: The largest request body: a document with its inline attachments in base64.
MAX_BODY = MAX_RECORD_BYTES * 2


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
    app.state.node, app.state.token = node, token
    install(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, limit=MAX_BODY, multipart_limit=MAX_BLOB_BYTES)
    for router in (documents.router, inbox.router, agencies.router, health.router):
        app.include_router(router)
    # Prometheus, like health, needs no token (DESIGN §10): the outbox's gauges with the
    # runtime's counters.
    app.mount("/metrics", make_asgi_app())
    OUTBOX_PENDING.set_function(lambda: node.outbox.pending_summary()[0])
    OUTBOX_OLDEST.set_function(lambda: _age(node.outbox.pending_summary()[1]))
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


def _age(since: datetime | None) -> float:
    return (datetime.now(UTC) - since).total_seconds() if since else 0.0
