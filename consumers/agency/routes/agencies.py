"""``/v1/agencies``: the agencies of the national directory in force (DESIGN §13), as the
edXML platform's ``getAgenciesList`` serves them: who can be sent to, under which unit and
jurisdiction, with the certificate documents to them are sealed to and the chains they
sign with."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from bus.registry import Agency, vietnam_date
from bus.wire.errors import DocbusError
from bus.wire.limits import MAX_NAME
from bus.wire.model import now_ms
from consumers.agency.deps import AUTH, Node
from consumers.agency.models import AgencyOut, AgencyPage
from consumers.agency.node import AgencyNode
from consumers.agency.problems import Problem

router = APIRouter(dependencies=AUTH)


@router.get("/v1/agencies", response_model=AgencyPage)
async def agencies(
    node: Node,
    unit: Annotated[str | None, Query(max_length=MAX_NAME)] = None,
    after: Annotated[str, Query(max_length=MAX_NAME)] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AgencyPage:
    """The agencies by code, after ``after``; only those of ``unit`` if given."""
    codes = sorted(
        code
        for code, agency in node.registry.agencies.items()
        if code > after and (unit is None or agency.unit == unit)
    )[:limit]
    return AgencyPage(
        items=[_agency(node, node.registry.agencies[code]) for code in codes],
        next=codes[-1] if len(codes) == limit else None,
        directory_version=node.directory.version if node.directory else None,
    )


@router.get("/v1/agencies/{code}", response_model=AgencyOut)
async def agency(code: str, node: Node) -> AgencyOut:
    found = node.registry.agencies.get(code)
    if found is None:
        raise Problem(404, f"{code} is not in the directory in force")
    return _agency(node, found)


def _agency(node: AgencyNode, agency: Agency) -> AgencyOut:
    today = vietnam_date(now_ms())
    try:
        jurisdiction: str | None = node.registry.resolve(agency.code, today).jurisdiction.id
    except DocbusError:
        jurisdiction = None  # no longer in force, and no successor that is
    directory = node.directory
    return AgencyOut(
        code=agency.code,
        name=agency.name,
        unit=agency.unit,
        jurisdiction=jurisdiction,
        in_force=agency.in_force(today),
        successor=agency.successor,
        encryption_certificate=directory.encryption.get(agency.code) if directory else None,
        signing_certificates=directory.signing.get(agency.code, []) if directory else [],
    )
