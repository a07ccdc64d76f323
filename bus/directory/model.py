"""The national directory's content (DESIGN §13): one versioned snapshot of the registry and
of each agency's current certificates (ENCRYPTION, and the SIGNER/AGENCY chains it signs
with). Pure: bytes in, bytes out.

Its wire form is canonical JSON (sorted keys, no spaces, UTF-8), so that the bytes signed
are the bytes any reader rebuilds and two directories compare by their digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from bus.registry import Registry, RegistryError, parse_registry
from bus.wire.errors import BusError

#: The signed event's payload type: a directory is not a document and never verifies as one.
DIRECTORY_TYPE = "application/vnd.docbus.directory+json"
FORMAT = 1


class DirectoryError(BusError, ValueError):
    """A directory that cannot be used: malformed, unsigned, foreign-signed, or older than the
    one in force. Says which."""


@dataclass(frozen=True)
class Directory:
    """One version of the directory.

    :param name: whose directory ("vn"): a reader follows one name.
    :param version: goes only forward.
    :param issued: when the operator made it (UTC).
    :param registry: the registry's JSON form (units and agencies, as ``registry.json``).
    :param encryption: agency code → its ENCRYPTION certificate chain, PEM, leaf first.
    :param signing: agency code → the chains it signs with (SIGNER, AGENCY), PEM, leaf first.
    """

    name: str
    version: int
    issued: datetime
    registry: dict[str, Any]
    encryption: dict[str, str] = field(default_factory=dict)
    signing: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        data = {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "issued": self.issued.isoformat(),
            "registry": self.registry,
            "encryption": self.encryption,
            "signing": self.signing,
        }
        return canonical(data)

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json()).hexdigest()

    @cached_property
    def parsed(self) -> Registry:
        """The registry it carries (checked when the directory was read)."""
        return parse_registry(self.registry)

    def __str__(self) -> str:
        units, agencies = len(self.registry["units"]), len(self.registry["agencies"])
        return (
            f"directory {self.name} version {self.version} of {self.issued:%Y-%m-%d %H:%M} UTC: "
            f"{units} units, {agencies} agencies, {len(self.encryption)} encryption certificates"
        )


def canonical(data: object) -> bytes:
    """The one JSON spelling of ``data``: sorted keys, no spaces, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sorted_registry(units: list[Any], agencies: list[Any]) -> dict[str, Any]:
    """A registry's JSON form in the directory's one order: units by id, agencies by code."""
    return {
        "units": sorted(units, key=lambda u: u["id"]),
        "agencies": sorted(agencies, key=lambda a: a["code"]),
    }


def parse_directory(data: bytes) -> Directory:
    """A directory from its JSON form; DirectoryError names what is wrong."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise DirectoryError(f"not a directory: {exc}") from exc
    directory = from_dict(raw)
    if directory.to_json() != data:
        raise DirectoryError("not in canonical form (sorted keys, no spaces, UTF-8)")
    return directory


def from_dict(raw: Any) -> Directory:
    """A directory from its parsed JSON form, every field checked; DirectoryError names
    what is wrong."""
    try:
        if raw.get("format") != FORMAT:
            raise DirectoryError(f"unknown directory format {raw.get('format')!r}")
        directory = Directory(
            name=text_of(raw["name"], "name"),
            version=version_of(raw["version"]),
            issued=datetime.fromisoformat(raw["issued"]),
            registry=raw["registry"],
            encryption={text_of(k, "agency"): text_of(v, k) for k, v in raw["encryption"].items()},
            signing={
                text_of(k, "agency"): [text_of(c, k) for c in v] for k, v in raw["signing"].items()
            },
        )
        if directory.issued.tzinfo is None:
            raise DirectoryError("issued has no time zone")
        directory.parsed  # noqa: B018  (a registry that does not hold together is refused now)
    except (ValueError, KeyError, TypeError, AttributeError, RegistryError) as exc:
        if isinstance(exc, DirectoryError):
            raise
        raise DirectoryError(f"not a directory: {exc}") from exc
    return directory


def text_of(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise DirectoryError(f"{what}: expected text, found {value!r}")
    return value


def version_of(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 10**12:
        raise DirectoryError(f"version: expected a positive integer, found {value!r}")
    return value


def diff(old: Directory, new: Directory) -> list[str]:
    """What changed from ``old`` to ``new``, one line each, for an operator to read."""
    lines = [f"version {old.version} → {new.version}"] if old.version != new.version else []
    for kind, key in (("unit", "id"), ("agency", "code")):
        section = "units" if kind == "unit" else "agencies"
        before = {e[key]: e for e in old.registry[section]}
        after = {e[key]: e for e in new.registry[section]}
        lines += [f"+ {kind} {k}: {after[k].get('name')}" for k in sorted(after.keys() - before)]
        lines += [f"- {kind} {k}: {before[k].get('name')}" for k in sorted(before.keys() - after)]
        for k in sorted(before.keys() & after.keys()):
            changed = sorted(
                f for f in before[k].keys() | after[k].keys() if before[k].get(f) != after[k].get(f)
            )
            lines += [
                f"~ {kind} {k}: {f} {before[k].get(f)!r} → {after[k].get(f)!r}" for f in changed
            ]
    for code in sorted(old.encryption.keys() | new.encryption.keys()):
        if old.encryption.get(code) != new.encryption.get(code):
            what = "renewed" if code in old.encryption and code in new.encryption else "set"
            if code not in new.encryption:
                what = "removed"
            lines.append(f"~ encryption certificate of {code} {what}")
    for code in sorted(old.signing.keys() | new.signing.keys()):
        had, has = set(old.signing.get(code, [])), set(new.signing.get(code, []))
        if had != has:
            lines.append(
                f"~ signing certificates of {code}: {len(has - had)} added, "
                f"{len(had - has)} removed"
            )
    return lines
