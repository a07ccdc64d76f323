"""``docbus registry resolve|list``: the jurisdiction registry."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import click
from rich.console import Console
from rich.table import Table

from bus.cli.options import DocbusGroup, registry_option
from bus.registry import Registry


@click.group(cls=DocbusGroup)
def registry() -> None:
    """The jurisdiction registry: agencies, units and their successors."""


def _day(value: str | None) -> date:
    if value is None:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a YYYY-MM-DD date") from exc


@registry.command("resolve")
@click.argument("code")
@click.option("--at", "at_text", help="Date (YYYY-MM-DD); default today.")
@registry_option
def registry_resolve(code: str, at_text: str | None, registry: Registry) -> None:
    """Print the unit, level and delivery jurisdiction of CODE and the successor path taken."""
    r = registry.resolve(code, _day(at_text))
    click.echo(f"agency:       {r.agency.code} {r.agency.name}")
    click.echo(f"unit:         {r.unit.id} ({r.unit.name}), level {r.unit.level.value}")
    click.echo(f"jurisdiction: {r.jurisdiction.id} ({r.jurisdiction.name})")
    click.echo(f"path:         {' -> '.join(r.path)}")


@registry.command("list")
@click.option("--at", "at_text", help="Date (YYYY-MM-DD); default today.")
@click.option("--json", "as_json", is_flag=True)
@registry_option
def registry_list(at_text: str | None, as_json: bool, registry: Registry) -> None:
    """The agencies in force on a date, with unit, level and delivery jurisdiction."""
    reg = registry
    on = _day(at_text)
    rows = []
    for agency in reg.in_force(on):
        r = reg.resolve(agency.code, on)
        rows.append(
            {
                "code": agency.code,
                "name": agency.name,
                "unit": r.unit.id,
                "level": r.unit.level.value,
                "jurisdiction": r.jurisdiction.id,
                "illustrative": agency.illustrative,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    table = Table(title=f"Agencies in force on {on}")
    for column in ("code", "name", "unit", "level", "jurisdiction"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("code", "name", "unit", "level", "jurisdiction")))
    Console().print(table)
