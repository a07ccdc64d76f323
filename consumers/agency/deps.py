"""What every route of the agency node depends on: the node it serves, and the bearer token
that guards everything but health (DESIGN §11)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from consumers.agency.node import AgencyNode
from consumers.agency.problems import Problem

_BEARER = HTTPBearer(auto_error=False)


def node_of(request: Request) -> AgencyNode:
    node: AgencyNode = request.app.state.node
    return node


def authorised(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> None:
    given = credentials.credentials if credentials else ""
    token: str = request.app.state.token
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Problem(401, "a valid bearer token is required")


Node = Annotated[AgencyNode, Depends(node_of)]
AUTH = [Depends(authorised)]
