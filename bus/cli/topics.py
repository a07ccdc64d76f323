"""``docbus topics ensure``: the topics of DESIGN §8."""

from __future__ import annotations

import asyncio

import click

from bus.cli.options import DocbusGroup, bootstrap_option, kafka, registry_option
from bus.kafka.topics import all_topics, ensure_topics
from bus.registry import Registry


@click.group(cls=DocbusGroup)
def topics() -> None:
    """The docbus topics (DESIGN §8)."""


@topics.command("ensure")
@bootstrap_option
@click.option("--partitions", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--replication", default=1, show_default=True, type=click.IntRange(min=1))
@registry_option
def topics_ensure(
    bootstrap: str | None, partitions: int, replication: int, registry: Registry
) -> None:
    """Create the submitted, status and rejected topics and a delivery topic per jurisdiction."""
    settings = kafka(bootstrap)
    names = all_topics(settings.topics, registry)
    created = asyncio.run(ensure_topics(settings, names, partitions, replication))
    click.echo(f"{len(names)} topics, {len(created)} created")
