"""The jurisdiction registry (DESIGN §8): agencies, units and their successors over time.

Pure logic over a data file: :func:`load_registry` reads the JSON, :class:`Registry`
answers which unit and which delivery jurisdiction an agency code belongs to on a date,
following successors of abolished or merged agencies and units.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from enum import StrEnum
from importlib.resources import files
from pathlib import Path
from typing import Any

from bus.wire.errors import BusError, DocbusError, Reason


class RegistryError(BusError, ValueError):
    """The registry data itself is inconsistent (a dangling reference or a cycle)."""


class Level(StrEnum):
    CENTRAL = "CENTRAL"
    PROVINCE = "PROVINCE"
    COMMUNE = "COMMUNE"


@dataclass(frozen=True)
class _Span:
    valid_from: date | None
    valid_to: date | None

    def in_force(self, on: date) -> bool:
        return (self.valid_from is None or self.valid_from <= on) and (
            self.valid_to is None or on <= self.valid_to
        )


@dataclass(frozen=True)
class Unit(_Span):
    """An administrative unit: the central level, a province or city, a commune or ward."""

    id: str
    name: str
    level: Level
    parent: str | None
    successor: str | None


@dataclass(frozen=True)
class Agency(_Span):
    """An agency that sends and receives documents, belonging to one unit."""

    code: str
    name: str
    unit: str
    successor: str | None
    illustrative: bool


@dataclass(frozen=True)
class Resolution:
    """Where a code asked about on a date ends up."""

    asked: str
    on: date
    agency: Agency
    unit: Unit
    jurisdiction: Unit
    path: tuple[str, ...]

    @property
    def rerouted(self) -> bool:
        """Whether the code was replaced by a successor agency."""
        return self.agency.code != self.asked


#: Asia/Ho_Chi_Minh: UTC+7 all year (no daylight saving since 1975), so a fixed offset
#: needs no time-zone database on the machine.
VIETNAM = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")


def vietnam_date(moment: datetime) -> date:
    """The calendar date in Vietnam at ``moment``: the reorganisation took effect at local
    midnight, so dates meet the registry in Vietnam's time (DESIGN §8)."""
    return moment.astimezone(VIETNAM).date()


def _date(value: Any) -> date | None:
    return None if value is None else date.fromisoformat(value)


class Registry:
    """Agencies and units with their validity and successors."""

    def __init__(self, units: list[Unit], agencies: list[Agency]) -> None:
        self.units = {u.id: u for u in units}
        self.agencies = {a.code: a for a in agencies}
        self._predecessors: dict[str, frozenset[str]] = {}
        if len(self.units) != len(units):
            raise RegistryError("a unit id appears twice")
        if len(self.agencies) != len(agencies):
            raise RegistryError("an agency code appears twice")
        self._check()

    def _check(self) -> None:
        for u in self.units.values():
            for ref in (u.parent, u.successor):
                if ref is not None and ref not in self.units:
                    raise RegistryError(f"unit {u.id} refers to unknown unit {ref}")
            self._walk(u.id, lambda i: self.units[i].successor, "unit successor")
            self._walk(u.id, lambda i: self.units[i].parent, "unit parent")
        for a in self.agencies.values():
            if a.unit not in self.units:
                raise RegistryError(f"agency {a.code} belongs to unknown unit {a.unit}")
            if a.successor is not None and a.successor not in self.agencies:
                raise RegistryError(f"agency {a.code} has unknown successor {a.successor}")
            self._walk(a.code, lambda c: self.agencies[c].successor, "agency successor")

    @staticmethod
    def _walk(start: str, step: Any, what: str) -> list[str]:
        seen = [start]
        nxt = step(start)
        while nxt is not None:
            if nxt in seen:
                raise RegistryError(f"{what} cycle: {' -> '.join([*seen, nxt])}")
            seen.append(nxt)
            nxt = step(nxt)
        return seen

    def resolve(self, code: str, on: date) -> Resolution:
        """The agency, unit and delivery jurisdiction for ``code`` on ``on``.

        Follows successors of an agency no longer in force, then the successors and
        parents of its unit, up to the province-level (or central) unit.
        Raises DocbusError(unknown_recipient) when the code is unknown or has no agency
        in force on that date.
        """
        agency = self.agencies.get(code)
        if agency is None:
            raise DocbusError(Reason.UNKNOWN_RECIPIENT, f"unknown agency code {code}")
        path = [code]
        while not agency.in_force(on):
            if agency.valid_from is not None and on < agency.valid_from:
                raise DocbusError(
                    Reason.UNKNOWN_RECIPIENT,
                    f"agency {agency.code} exists only from {agency.valid_from}",
                )
            if agency.successor is None:
                raise DocbusError(
                    Reason.UNKNOWN_RECIPIENT,
                    f"agency {agency.code} ended on {agency.valid_to} with no successor",
                )
            agency = self.agencies[agency.successor]
            path.append(agency.code)
        unit = self._unit_in_force(agency.unit, on)
        top = unit
        while top.level is Level.COMMUNE and top.parent is not None:
            top = self._unit_in_force(top.parent, on)
        return Resolution(code, on, agency, unit, top, tuple(path))

    def _unit_in_force(self, unit_id: str, on: date) -> Unit:
        unit = self.units[unit_id]
        while not unit.in_force(on):
            if unit.successor is None:
                raise DocbusError(
                    Reason.UNKNOWN_RECIPIENT, f"unit {unit.id} is not in force on {on}"
                )
            unit = self.units[unit.successor]
        return unit

    def jurisdictions_from(self, code: str, on: date) -> list[str]:
        """The delivery jurisdictions ``code`` belongs to on ``on`` and on every later day the
        registry changes (a merger it names ahead), in order: what an inbox must read."""
        spans: list[_Span] = [*self.units.values(), *self.agencies.values()]
        changes = {s.valid_from for s in spans} | {
            s.valid_to + timedelta(days=1) for s in spans if s.valid_to is not None
        }
        found: list[str] = []
        for day in sorted({on} | {d for d in changes if d is not None and d > on}):
            try:
                jurisdiction = self.resolve(code, day).jurisdiction.id
            except DocbusError:
                continue  # not in force that day
            if jurisdiction not in found:
                found.append(jurisdiction)
        return found

    def in_force(self, on: date) -> Iterator[Agency]:
        """The agencies in force on ``on``, in file order."""
        return (a for a in self.agencies.values() if a.in_force(on))

    def predecessors(self, code: str) -> set[str]:
        """Every agency code whose successor chain reaches ``code`` (not ``code`` itself)."""
        cached = self._predecessors.get(code)
        if cached is None:
            cached = self._predecessors[code] = frozenset(self._walk_back(code))
        return set(cached)

    def _walk_back(self, code: str) -> set[str]:
        found: set[str] = set()
        for a in self.agencies.values():
            nxt = a.successor
            while nxt is not None and nxt != code:
                nxt = self.agencies[nxt].successor
            if nxt == code:
                found.add(a.code)
        return found


def parse_registry(data: dict[str, Any]) -> Registry:
    """Build a registry from its JSON form; raises RegistryError naming what is wrong."""
    try:
        units = [
            Unit(
                id=u["id"],
                name=u["name"],
                level=Level(u["level"]),
                parent=u.get("parent"),
                successor=u.get("successor"),
                valid_from=_date(u.get("valid_from")),
                valid_to=_date(u.get("valid_to")),
            )
            for u in data["units"]
        ]
        agencies = [
            Agency(
                code=a["code"],
                name=a["name"],
                unit=a["unit"],
                successor=a.get("successor"),
                illustrative=bool(a.get("illustrative", False)),
                valid_from=_date(a.get("valid_from")),
                valid_to=_date(a.get("valid_to")),
            )
            for a in data["agencies"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryError(f"bad registry entry: {exc!r}") from exc
    return Registry(units, agencies)


def load_registry(path: Path | None = None) -> Registry:
    """The registry in ``path``, or the one shipped with the package."""
    text = (
        path.read_text(encoding="utf-8")
        if path is not None
        else (files("bus") / "data" / "registry.json").read_text(encoding="utf-8")
    )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"registry is not JSON: {exc}") from exc
    return parse_registry(data)
