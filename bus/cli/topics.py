"""``docbus topics ensure``: the topics of DESIGN §8."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from bus.cli.options import DocbusGroup, bootstrap_option, kafka, registry_option
from bus.kafka.topics import Difference, all_topics, check_topics, ensure_topics
from bus.registry import Registry


def _layout(f: Any) -> Any:
    """The options ensure and check share: the broker, and the layout the topics should have."""
    for option in reversed(
        (
            bootstrap_option,
            click.option("--partitions", default=3, show_default=True, type=click.IntRange(min=1)),
            click.option("--replication", default=1, show_default=True, type=click.IntRange(min=1)),
            click.option(
                "--status-partitions",
                default=64,
                show_default=True,
                type=click.IntRange(min=1),
                help="docbus.status's: each agency node reads one (never add any later).",
            ),
            registry_option,
        )
    ):
        f = option(f)
    return f


@click.group(cls=DocbusGroup)
def topics() -> None:
    """The docbus topics (DESIGN §8)."""


@topics.command("ensure")
@_layout
def topics_ensure(
    bootstrap: str | None,
    partitions: int,
    replication: int,
    status_partitions: int,
    registry: Registry,
) -> None:
    """Create the submitted, status and rejected topics and a delivery topic per jurisdiction
    with DESIGN §8's configs; say what each topic is, and what still differs (exit 1)."""
    settings = kafka(bootstrap)
    names = all_topics(settings.topics, registry)
    layout = (partitions, replication, status_partitions)
    created = set(asyncio.run(ensure_topics(settings, names, *layout)))
    differences = asyncio.run(check_topics(settings, names, *layout))
    for name in names:
        click.echo(f"{name}: {'created' if name in created else 'exists'}")
    _report(len(names), differences)


@topics.command("check")
@_layout
def topics_check(
    bootstrap: str | None,
    partitions: int,
    replication: int,
    status_partitions: int,
    registry: Registry,
) -> None:
    """Say how the broker's topics differ from DESIGN §8 (exit 1 if they do); change nothing."""
    settings = kafka(bootstrap)
    names = all_topics(settings.topics, registry)
    layout = (partitions, replication, status_partitions)
    _report(len(names), asyncio.run(check_topics(settings, names, *layout)))


def _report(count: int, differences: list[Difference]) -> None:
    for d in differences:
        click.echo(f"differs: {d}")
    click.echo(f"{count} topics, {len(differences)} differences")
    if differences:
        sys.exit(1)
