"""Making a directory (DESIGN §13): from a registry and the agencies' encryption certificates,
and, for benchmarks, grown to national size. Pure: data in, a :class:`Directory` out."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from bus.directory.model import Directory, sorted_registry

NAME = "vn"


def make_directory(
    registry: dict[str, Any],
    encryption: Mapping[str, str],
    version: int,
    issued: datetime,
    name: str = NAME,
    signing: Mapping[str, Sequence[str]] | None = None,
) -> Directory:
    """A directory of ``registry`` (its JSON form, ``about`` dropped), the PEM
    ``encryption`` chains of its agencies and the chains each signs with."""
    content = sorted_registry(copy.deepcopy(registry["units"]), copy.deepcopy(registry["agencies"]))
    chains = {code: sorted(pems) for code, pems in (signing or {}).items()}
    return Directory(name, version, issued, content, dict(encryption), chains)


def national(seed: dict[str, Any], communes: int, agencies: int) -> dict[str, Any]:
    """``seed`` (a registry's JSON form) grown to ``communes`` communes spread over its
    provinces in force, and ``agencies`` agencies in all, one per commune first, the rest
    at the provinces: the shape of Vietnam after 1 July 2025 (34 provinces, about 3,300
    communes, about 20,000 agencies), with made-up names and codes."""
    units = list(seed["units"])
    found = list(seed["agencies"])
    provinces = [u["id"] for u in units if u["level"] == "PROVINCE" and u.get("valid_to") is None]
    new_units = [
        {
            "id": f"{provinces[n % len(provinces)]}-xa-{n:04d}",
            "name": f"Xã số {n}",
            "level": "COMMUNE",
            "parent": provinces[n % len(provinces)],
            "valid_from": "2025-07-01",
            "valid_to": None,
            "successor": None,
        }
        for n in range(communes)
    ]
    homes = [u["id"] for u in new_units] + provinces
    new_agencies = [
        {
            "code": f"{900 + n // 10000:03d}.{n // 100 % 100:02d}.{n % 100:02d}.N{n % 7:02d}",
            "name": f"Cơ quan số {n}",
            "unit": homes[n] if n < len(new_units) else homes[len(new_units) + n % len(provinces)],
            "valid_from": "2025-07-01",
            "valid_to": None,
            "successor": None,
            "illustrative": True,
        }
        for n in range(max(0, agencies - len(found)))
    ]
    return {"units": units + new_units, "agencies": found + new_agencies}
