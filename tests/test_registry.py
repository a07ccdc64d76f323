"""The jurisdiction registry and the 2025 reorganisation it ships."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

from bus.registry import Level, Registry, RegistryError, parse_registry
from bus.wire.errors import DocbusError, Reason

AFTER = date(2025, 8, 1)
BEFORE = date(2025, 6, 1)
# The published list of the 2025 reorganisation, copied unchanged from shared/samples (data
# written by others, not a list of our own), so a clone anywhere carries it.
SAMPLE = Path(__file__).resolve().parent / "data" / "registry" / "provinces-2025.md"


def _province_units(registry: Registry, on: date) -> set[str]:
    return {
        u.name.removeprefix("Tỉnh ").removeprefix("Thành phố ")
        for u in registry.units.values()
        if u.level is Level.PROVINCE and u.in_force(on)
    }


def test_63_provinces_before_and_34_after_the_reorganisation(registry: Registry) -> None:
    assert len(_province_units(registry, date(2024, 12, 1))) == 63
    assert len(_province_units(registry, AFTER)) == 34


def test_the_34_units_are_those_of_the_published_list(registry: Registry) -> None:
    """Checked against the published list (tests/data/registry), not a list of our own."""
    text = SAMPLE.read_text(encoding="utf-8")
    unchanged = text.split("## Unchanged (11)")[1].split("##")[0]
    names = {re.sub(r"\s*\(city\)", "", n).strip().rstrip(".") for n in unchanged.split(",")}
    names.discard("")
    formed = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \| present-day", text, flags=re.M)
    names |= {re.sub(r"\s*\(city\)", "", new).strip() for new, _ in formed}
    assert len(names) == 34
    assert _province_units(registry, AFTER) == names
    # Every former unit of a merger resolves to the new unit after 2025-07-01.
    by_name = {
        u.name.removeprefix("Tỉnh ").removeprefix("Thành phố "): u for u in registry.units.values()
    }
    for new, former in formed:
        new_name = re.sub(r"\s*\(city\)", "", new).strip()
        for old in (f.strip() for f in former.split(",")):
            agency = next(a for a in registry.agencies.values() if a.unit == by_name[old].id)
            assert registry.resolve(agency.code, AFTER).jurisdiction.name.endswith(new_name), old


def test_bac_giang_agencies_are_delivered_to_bac_ninh_after_the_merger(registry: Registry) -> None:
    after = registry.resolve("000.00.00.H04", AFTER)
    assert after.rerouted and after.path == ("000.00.00.H04", "000.00.00.H06")
    assert after.agency.name == "UBND tỉnh Bắc Ninh"
    assert after.jurisdiction.id == "bac-ninh"
    before = registry.resolve("000.00.00.H04", BEFORE)
    assert not before.rerouted and before.jurisdiction.id == "bac-giang"


def test_binh_dinh_goes_to_gia_lai_and_thua_thien_hue_is_hue_city(registry: Registry) -> None:
    assert registry.resolve("000.00.00.H09", AFTER).jurisdiction.id == "gia-lai"
    assert registry.resolve("000.00.00.H57", AFTER).jurisdiction.name == "Thành phố Huế"
    assert registry.resolve("000.00.00.H57", date(2024, 6, 1)).jurisdiction.id == "thua-thien-hue"


def test_the_sample_codes_are_present_and_real(registry: Registry) -> None:
    vpcp = registry.agencies["000.00.00.G22"]
    nghe_an = registry.agencies["000.00.00.H41"]
    assert vpcp.name == "Văn phòng Chính phủ" and not vpcp.illustrative
    assert nghe_an.name == "UBND tỉnh Nghệ An" and not nghe_an.illustrative
    assert registry.resolve("000.00.00.G22", AFTER).jurisdiction.level is Level.CENTRAL


def test_a_commune_is_delivered_to_its_province_and_follows_successors(registry: Registry) -> None:
    old_ward = registry.resolve("002.01.04.H04", AFTER)  # a ward of the former Bắc Giang city
    assert old_ward.unit.level is Level.COMMUNE
    assert old_ward.unit.name == "Phường Bắc Giang"
    assert old_ward.jurisdiction.id == "bac-ninh"
    assert registry.resolve("002.01.04.H04", BEFORE).jurisdiction.id == "bac-giang"


def test_merged_ministries_route_to_their_successor(registry: Registry) -> None:
    assert registry.resolve("000.00.00.G08", AFTER).agency.name == "Bộ Tài chính"
    assert (
        registry.resolve("000.00.00.G08", date(2025, 1, 1)).agency.name == "Bộ Kế hoạch và Đầu tư"
    )


def test_predecessors_of_an_agency(registry: Registry) -> None:
    assert registry.predecessors("000.00.00.H06") == {"000.00.00.H04"}
    assert registry.predecessors("000.00.00.H30") == {"000.00.00.H02", "000.00.00.H08"}


def test_unknown_codes_and_agencies_not_yet_in_force_are_unknown_recipients(
    registry: Registry,
) -> None:
    with pytest.raises(DocbusError) as info:
        registry.resolve("000.00.00.H99", AFTER)
    assert info.value.reason is Reason.UNKNOWN_RECIPIENT
    with pytest.raises(DocbusError) as info:
        registry.resolve("001.01.06.H06", BEFORE)  # a ward created on 2025-07-01
    assert info.value.reason is Reason.UNKNOWN_RECIPIENT


def _tiny(successors: dict[str, str | None]) -> dict[str, object]:
    return {
        "units": [{"id": "p", "name": "P", "level": "PROVINCE"}],
        "agencies": [
            {"code": c, "name": c, "unit": "p", "valid_to": "2025-06-30", "successor": s}
            for c, s in successors.items()
        ],
    }


def test_a_successor_cycle_is_a_clear_error() -> None:
    with pytest.raises(RegistryError, match="cycle: A -> B -> C -> A"):
        parse_registry(_tiny({"A": "B", "B": "C", "C": "A"}))


def test_a_dangling_successor_is_a_clear_error() -> None:
    with pytest.raises(RegistryError, match="unknown successor Z"):
        parse_registry(_tiny({"A": "Z"}))


def test_an_agency_ended_without_successor_is_unknown_after_its_end() -> None:
    reg = parse_registry(_tiny({"A": None}))
    assert reg.resolve("A", BEFORE).agency.code == "A"
    with pytest.raises(DocbusError, match="ended on 2025-06-30 with no successor"):
        reg.resolve("A", AFTER)
