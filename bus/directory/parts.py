"""The directory in records (DESIGN §13). At national size one version (the registry and
20,000 agencies' certificates, some 30 MB) is far over the one record limit, so it travels
as **parts**: each holds the entries (units, agencies, certificates) whose name falls in its
share, is named by its SHA-256, and is written once; a **manifest** names the version and
its parts in order, and is the one thing signed. A version that renews one certificate is
one new part and a new manifest. Pure: data in, data out."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bus.directory.model import (
    FORMAT,
    Directory,
    DirectoryError,
    canonical,
    from_dict,
    sorted_registry,
    text_of,
    version_of,
)
from bus.wire.limits import MAX_RECORD_BYTES

#: A part's size aimed at: well under the record limit, so that a share grown by chance stays
#: under it too.
PART_BYTES = 1024 * 1024
MANIFEST_FORMAT = 1
_DIGEST = frozenset("0123456789abcdef")


class MissingPart(DirectoryError):
    """A part a manifest names has not been read (yet)."""


@dataclass(frozen=True)
class Manifest:
    """What the directory operator signs: a version and the SHA-256 of each of its parts."""

    name: str
    version: int
    issued: datetime
    parts: tuple[str, ...]

    def to_json(self) -> bytes:
        return canonical(
            {
                "manifest": MANIFEST_FORMAT,
                "name": self.name,
                "version": self.version,
                "issued": self.issued.isoformat(),
                "parts": list(self.parts),
            }
        )

    @property
    def key(self) -> bytes:
        """Its record key: name, version and digest, so that a record someone else wrote
        under the same name and version never compacts the genuine one away."""
        digest = hashlib.sha256(self.to_json()).hexdigest()
        return f"{self.name}/{self.version:012d}/{digest}".encode()


def part_key(name: str, digest: str) -> bytes:
    """A part's record key: the part is its digest's, whoever wrote it."""
    return f"{name}/part/{digest}".encode()


def is_part(key: bytes | None) -> bool:
    return key is not None and key.split(b"/")[1:2] == [b"part"]


def split(directory: Directory) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest of ``directory`` and its parts by digest. Entries are shared out by a
    hash of their name, so an unchanged entry stays in the same part across versions."""
    count = 1
    while len(directory.to_json()) / count > PART_BYTES:
        count *= 2
    shares: list[dict[str, Any]] = [
        {"units": [], "agencies": [], "encryption": {}, "signing": {}} for _ in range(count)
    ]
    for unit in directory.registry["units"]:
        shares[_share(unit["id"], count)]["units"].append(unit)
    for agency in directory.registry["agencies"]:
        shares[_share(agency["code"], count)]["agencies"].append(agency)
    for section in ("encryption", "signing"):
        for code, value in getattr(directory, section).items():
            shares[_share(code, count)][section][code] = value
    parts = {}
    for share in shares:
        data = canonical(share)
        if len(data) > MAX_RECORD_BYTES:
            raise DirectoryError(f"a part of {len(data)} bytes is over the record limit")
        parts[hashlib.sha256(data).hexdigest()] = data
    manifest = Manifest(directory.name, directory.version, directory.issued, tuple(parts))
    return manifest, parts


def _share(name: str, count: int) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % count


def parse_manifest(data: bytes) -> Manifest:
    """A manifest from its canonical JSON; DirectoryError names what is wrong."""
    try:
        raw = json.loads(data)
        if raw.get("manifest") != MANIFEST_FORMAT:
            raise DirectoryError(f"unknown manifest format {raw.get('manifest')!r}")
        parts = tuple(raw["parts"])
        if not parts or not all(isinstance(p, str) and _is_digest(p) for p in parts):
            raise DirectoryError("parts: expected SHA-256 digests")
        manifest = Manifest(
            text_of(raw["name"], "name"),
            version_of(raw["version"]),
            datetime.fromisoformat(raw["issued"]),
            parts,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, DirectoryError):
            raise
        raise DirectoryError(f"not a directory manifest: {exc}") from exc
    if manifest.to_json() != data:
        raise DirectoryError("not in canonical form (sorted keys, no spaces, UTF-8)")
    return manifest


def _is_digest(text: str) -> bool:
    return len(text) == 64 and set(text) <= _DIGEST


def assemble(manifest: Manifest, parts: Mapping[str, bytes]) -> Directory:
    """The directory ``manifest`` names, from ``parts`` (by digest, each checked by whoever
    filled the mapping). Raises DirectoryError: a part missing, an entry in two parts, or
    what the whole would be refused for."""
    units: dict[str, Any] = {}
    agencies: dict[str, Any] = {}
    encryption: dict[str, Any] = {}
    signing: dict[str, Any] = {}
    for digest in manifest.parts:
        if digest not in parts:
            raise MissingPart(f"version {manifest.version}: part {digest[:16]} not found")
        try:
            share = json.loads(parts[digest])
            pairs = [
                (units, {u["id"]: u for u in share["units"]}),
                (agencies, {a["code"]: a for a in share["agencies"]}),
                (encryption, dict(share["encryption"])),
                (signing, dict(share["signing"])),
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise DirectoryError(f"part {digest[:16]}: malformed ({exc})") from exc
        for into, found in pairs:
            if into.keys() & found.keys():
                raise DirectoryError(f"part {digest[:16]} repeats {sorted(into.keys() & found)[0]}")
            into.update(found)
    return from_dict(
        {
            "format": FORMAT,
            "name": manifest.name,
            "version": manifest.version,
            "issued": manifest.issued.isoformat(),
            "registry": sorted_registry(list(units.values()), list(agencies.values())),
            "encryption": encryption,
            "signing": signing,
        }
    )
