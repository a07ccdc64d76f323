"""``docbus demo`` and ``docbus dev``: the whole bus on the embedded broker."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bus.cli.options import database_url, settings
from bus.demo import run_demo, run_dev

_database_option = click.option(
    "--database",
    metavar="URL",
    help="Keep the archive in this (empty) PostgreSQL database (default: DOCBUS_DATABASE).",
)


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the archive, outboxes, inboxes and PKI here (default: a fresh temp folder).",
)
@_database_option
def demo(data_dir: Path | None, database: str | None) -> None:
    """Run the whole bus on an embedded broker, publish real-looking documents, check fates."""
    if not run_demo(data_dir, settings().tansu_bin, database_url(database)):
        sys.exit(1)


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the archive, inboxes and PKI here (default: a fresh temp folder).",
)
@_database_option
def dev(data_dir: Path | None, database: str | None) -> None:
    """Run the embedded broker and every service until Ctrl-C."""
    run_dev(data_dir, settings().tansu_bin, database_url(database))
