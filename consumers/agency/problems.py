"""RFC 9457 problem details: every error of the HTTP APIs, as ``application/problem+json``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from bus.wire.errors import DocbusError, Reason

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:docbus:problem:"
_TITLES = {
    400: "Malformed request",
    401: "Not authenticated",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Too large",
    415: "Unsupported media type",
    422: "Invalid document",
    503: "Unavailable",
}
#: The HTTP status that answers each reason code of the bus (DESIGN §7).
STATUS_OF = {Reason.TOO_LARGE: 413, Reason.DUPLICATE_CONFLICT: 409, Reason.MALFORMED: 400}


class ProblemOut(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    reason: str | None = None


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of an app whose routes may answer ``codes`` as problems."""
    problem = {"model": ProblemOut, "content": {MEDIA_TYPE: {}}, "description": "a problem"}
    return {code: problem for code in codes}


class Problem(Exception):
    """An error answered as problem+json; ``reason`` is the bus's reason code, if any."""

    def __init__(self, status: int, detail: str, reason: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.reason = reason

    @classmethod
    def of(cls, exc: DocbusError) -> Problem:
        return cls(STATUS_OF.get(exc.reason, 422), exc.message, exc.reason.value)


def problem_body(status: int, detail: str, reason: str | None = None) -> dict[str, Any]:
    """RFC 9457 problem details as a JSON object."""
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + (reason or str(status)),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if reason:
        body["reason"] = reason
    return body


def problem_response(status: int, detail: str, reason: str | None = None) -> JSONResponse:
    body = problem_body(status, detail, reason)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem+json."""

    async def problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc.status, exc.detail, exc.reason)

    async def docbus_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DocbusError)
        p = Problem.of(exc)
        return problem_response(p.status, p.detail, p.reason)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        where = "; ".join(
            f"{'/'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()[:5]
        )
        return problem_response(400, where or "malformed request", Reason.MALFORMED.value)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        reason = Reason.MALFORMED.value if exc.status_code == 400 else None
        return problem_response(exc.status_code, str(exc.detail), reason)

    app.add_exception_handler(Problem, problem)
    app.add_exception_handler(DocbusError, docbus_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
